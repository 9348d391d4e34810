//! The wire envelope and its codec: bounded, versioned, signed, replay-checked.
//!
//! A frame is a 4-byte big-endian length followed by a CBOR-encoded [`Envelope`]:
//! `{version, kind, sender, message_id, timestamp_ms, body, signature}`. The body is the
//! CBOR encoding of a [`crate::messages::Body`]. CBOR is self-describing, so a decoder
//! ignores fields it does not know and an older node reads a newer node's messages.
//!
//! The signature covers every field but itself, and its context is the message kind, so
//! a signature made for one kind of message never verifies as another. Signing and
//! verification come in through [`Signer`] and [`Verifier`], which the identity crate
//! implements with real keys and the simulator with cheap stand-ins.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::messages::Body;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The oldest protocol version this build still reads.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Largest frame accepted, checked before anything is allocated.
pub const MAX_FRAME_LEN: usize = 64 * 1024;
/// How far a message's timestamp may be from the receiver's clock.
pub const DEFAULT_TIME_WINDOW_MS: u64 = 30_000;

/// Signs message bytes for a context (the message kind).
pub trait Signer {
    /// The sender's identity (a SPIFFE ID).
    fn id(&self) -> &str;
    /// A signature over `bytes` for `context`.
    fn sign(&self, context: &str, bytes: &[u8]) -> Vec<u8>;
}

/// Verifies that `sender` signed `bytes` for `context`.
pub trait Verifier {
    /// Whether the signature is `sender`'s.
    fn verify(&self, sender: &str, context: &str, bytes: &[u8], signature: &[u8]) -> bool;
}

/// Why a frame was refused. Nothing of a refused frame reaches the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix announces more than [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    /// Fewer bytes than the length prefix announces.
    #[error("truncated frame")]
    Truncated,
    /// The bytes are not a valid envelope or body.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A message kind this node does not know (from a newer peer).
    #[error("unknown message kind {0:?}")]
    UnknownKind(String),
    /// The envelope's kind does not match its body.
    #[error("the envelope says {envelope:?} but the body is {body:?}")]
    KindMismatch {
        /// Kind named in the envelope.
        envelope: String,
        /// Kind of the decoded body.
        body: &'static str,
    },
    /// A protocol version outside what this node speaks.
    #[error(
        "protocol version {got} is outside the supported {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"
    )]
    UnsupportedVersion {
        /// The sender's version.
        got: u16,
    },
    /// The timestamp is too far from the receiver's clock.
    #[error("timestamp {timestamp_ms} is outside the {window_ms} ms window around {now_ms}")]
    OutsideWindow {
        /// The message's timestamp.
        timestamp_ms: u64,
        /// The receiver's clock.
        now_ms: u64,
        /// The window.
        window_ms: u64,
    },
    /// The signature does not verify.
    #[error("bad signature from {0}")]
    BadSignature(String),
    /// The same message was seen before.
    #[error("replayed message {message_id} from {sender}")]
    Replay {
        /// The sender.
        sender: String,
        /// The repeated id.
        message_id: u64,
    },
}

/// The signed envelope around every message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Protocol version of the sender.
    pub version: u16,
    /// Message kind, also the signature context.
    pub kind: String,
    /// Sender's SPIFFE ID.
    pub sender: String,
    /// Unique per sender within the replay window.
    pub message_id: u64,
    /// Sender's clock at sending, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// CBOR-encoded body.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// Signature over everything above.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// The bytes a signature covers: every envelope field but the signature, each
/// length-prefixed so that no two envelopes share them.
fn signed_bytes(
    version: u16,
    kind: &str,
    sender: &str,
    message_id: u64,
    timestamp_ms: u64,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + kind.len() + sender.len() + body.len());
    out.extend_from_slice(&version.to_be_bytes());
    for field in [kind.as_bytes(), sender.as_bytes(), body] {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field);
    }
    out.extend_from_slice(&message_id.to_be_bytes());
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out
}

fn to_cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing plain data into a Vec cannot fail.
    let _ = ciborium::into_writer(value, &mut out);
    out
}

/// Encodes and signs `body` into a frame ready to send.
pub fn encode(body: &Body, signer: &dyn Signer, message_id: u64, now_ms: u64) -> Vec<u8> {
    let body_bytes = to_cbor(body);
    let kind = body.kind();
    let signature = signer.sign(
        kind,
        &signed_bytes(
            PROTOCOL_VERSION,
            kind,
            signer.id(),
            message_id,
            now_ms,
            &body_bytes,
        ),
    );
    let envelope = Envelope {
        version: PROTOCOL_VERSION,
        kind: kind.to_owned(),
        sender: signer.id().to_owned(),
        message_id,
        timestamp_ms: now_ms,
        body: body_bytes,
        signature,
    };
    let payload = to_cbor(&envelope);
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame
}

/// Reads a frame's length prefix: how many payload bytes follow. Call it on the first four
/// bytes and refuse the connection's frame before reading (or allocating) the rest.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        Err(DecodeError::TooLarge(len))
    } else {
        Ok(len)
    }
}

/// Remembers recent `(sender, message_id)` pairs to refuse replays. Entries older than
/// the time window are forgotten: a replay that old fails the timestamp check instead.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: HashMap<(String, u64), u64>,
    order: VecDeque<(u64, String, u64)>,
}

impl ReplayGuard {
    /// Records the pair; `false` if it was already seen.
    fn check_and_insert(
        &mut self,
        sender: &str,
        message_id: u64,
        now_ms: u64,
        window_ms: u64,
    ) -> bool {
        while let Some((at, _, _)) = self.order.front() {
            if at.saturating_add(2 * window_ms) >= now_ms {
                break;
            }
            if let Some((_, s, id)) = self.order.pop_front() {
                self.seen.remove(&(s, id));
            }
        }
        let key = (sender.to_owned(), message_id);
        if self.seen.contains_key(&key) {
            return false;
        }
        self.seen.insert(key, now_ms);
        self.order
            .push_back((now_ms, sender.to_owned(), message_id));
        true
    }

    /// Pairs remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// A decoded, verified message.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// Who sent it (verified).
    pub sender: String,
    /// The sender's message id.
    pub message_id: u64,
    /// The sender's timestamp.
    pub timestamp_ms: u64,
    /// The sender's protocol version.
    pub version: u16,
    /// The message.
    pub body: Body,
}

/// Decodes the payload of a frame (after its length prefix), checking version, time
/// window, signature and replay, in that order, before the body is decoded.
pub fn decode(
    payload: &[u8],
    verifier: &dyn Verifier,
    replays: &mut ReplayGuard,
    now_ms: u64,
    window_ms: u64,
) -> Result<Received, DecodeError> {
    if payload.len() > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge(payload.len()));
    }
    let envelope: Envelope =
        ciborium::from_reader(payload).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&envelope.version) {
        return Err(DecodeError::UnsupportedVersion {
            got: envelope.version,
        });
    }
    if envelope.timestamp_ms.abs_diff(now_ms) > window_ms {
        return Err(DecodeError::OutsideWindow {
            timestamp_ms: envelope.timestamp_ms,
            now_ms,
            window_ms,
        });
    }
    let signed = signed_bytes(
        envelope.version,
        &envelope.kind,
        &envelope.sender,
        envelope.message_id,
        envelope.timestamp_ms,
        &envelope.body,
    );
    if !verifier.verify(
        &envelope.sender,
        &envelope.kind,
        &signed,
        &envelope.signature,
    ) {
        return Err(DecodeError::BadSignature(envelope.sender));
    }
    if !replays.check_and_insert(&envelope.sender, envelope.message_id, now_ms, window_ms) {
        return Err(DecodeError::Replay {
            sender: envelope.sender,
            message_id: envelope.message_id,
        });
    }
    let body = decode_body(&envelope.body, &envelope.kind)?;
    Ok(Received {
        sender: envelope.sender,
        message_id: envelope.message_id,
        timestamp_ms: envelope.timestamp_ms,
        version: envelope.version,
        body,
    })
}

/// Encodes a message body alone, as an envelope carries it (for tests and the fuzzer).
pub fn encode_body(body: &Body) -> Vec<u8> {
    to_cbor(body)
}

/// Decodes a message body (CBOR) that an envelope says is of `kind`.
pub fn decode_body(bytes: &[u8], kind: &str) -> Result<Body, DecodeError> {
    let body: Body = ciborium::from_reader(bytes).map_err(|e| {
        let message = e.to_string();
        if message.contains("unknown variant") {
            DecodeError::UnknownKind(kind.to_owned())
        } else {
            DecodeError::Malformed(message)
        }
    })?;
    if body.kind() != kind {
        return Err(DecodeError::KindMismatch {
            envelope: kind.to_owned(),
            body: body.kind(),
        });
    }
    Ok(body)
}

/// Decodes a whole frame, length prefix included (for tests and the fuzzer).
pub fn decode_frame(
    frame: &[u8],
    verifier: &dyn Verifier,
    replays: &mut ReplayGuard,
    now_ms: u64,
    window_ms: u64,
) -> Result<Received, DecodeError> {
    let prefix: [u8; 4] = frame
        .get(..4)
        .and_then(|p| p.try_into().ok())
        .ok_or(DecodeError::Truncated)?;
    let len = frame_len(prefix)?;
    let payload = frame.get(4..4 + len).ok_or(DecodeError::Truncated)?;
    decode(payload, verifier, replays, now_ms, window_ms)
}
