//! The codec refuses, with a typed error, everything that is not a fresh, authentic,
//! well-formed message of a supported version, and accepts newer senders' extra fields.

use parley_negotiation::codec::{
    self, DEFAULT_TIME_WINDOW_MS, DecodeError, Envelope, MAX_FRAME_LEN, PROTOCOL_VERSION,
    ReplayGuard, Signer,
};
use parley_negotiation::messages::{
    Bid, Body, LogChunk, LogLine, LogStream, LogsReply, MAX_LOG_LINE_BYTES, Release,
};
use parley_negotiation::testing::{ChecksumVerifier, KeyedChecksum};
use proptest::prelude::*;

const SEED: u64 = 7;
const NOW: u64 = 1_800_000_000_000;

fn signer() -> KeyedChecksum {
    KeyedChecksum::new("spiffe://example.org/node/a", SEED)
}

fn verifier() -> ChecksumVerifier {
    ChecksumVerifier { seed: SEED }
}

fn bid() -> Body {
    Body::Bid(Bid {
        auction: 9,
        replica: 1,
        reservation: "r-1".to_owned(),
        score: 7_500,
        expires_at_ms: NOW + 5_000,
        has_image: true,
        failure_domain: Some("rack-2".to_owned()),
    })
}

fn decode(frame: &[u8], replays: &mut ReplayGuard, now: u64) -> Result<Body, DecodeError> {
    codec::decode_frame(frame, &verifier(), replays, now, DEFAULT_TIME_WINDOW_MS).map(|r| r.body)
}

fn cbor<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).unwrap();
    out
}

/// A frame around a hand-made body, signed as the real encoder signs.
fn frame_with_body(kind: &str, body: Vec<u8>, version: u16, message_id: u64) -> Vec<u8> {
    let signer = signer();
    let mut signed = Vec::new();
    signed.extend_from_slice(&version.to_be_bytes());
    for field in [kind.as_bytes(), signer.id().as_bytes(), &body] {
        signed.extend_from_slice(&(field.len() as u32).to_be_bytes());
        signed.extend_from_slice(field);
    }
    signed.extend_from_slice(&message_id.to_be_bytes());
    signed.extend_from_slice(&NOW.to_be_bytes());
    let envelope = Envelope {
        version,
        kind: kind.to_owned(),
        sender: signer.id().to_owned(),
        message_id,
        timestamp_ms: NOW,
        signature: signer.sign(kind, &signed),
        body,
    };
    let payload = cbor(&envelope);
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    frame
}

#[test]
fn a_message_round_trips() {
    let frame = codec::encode(&bid(), &signer(), 1, NOW);
    let received = codec::decode_frame(
        &frame,
        &verifier(),
        &mut ReplayGuard::default(),
        NOW,
        DEFAULT_TIME_WINDOW_MS,
    )
    .unwrap();
    assert_eq!(received.body, bid());
    assert_eq!(received.sender, "spiffe://example.org/node/a");
    assert_eq!(received.version, PROTOCOL_VERSION);
}

#[test]
fn a_newer_senders_extra_field_is_ignored() {
    #[derive(serde::Serialize)]
    struct BidFromTheFuture {
        kind: &'static str,
        auction: u64,
        replica: u32,
        reservation: &'static str,
        score: u32,
        expires_at_ms: u64,
        gpu_models: Vec<&'static str>,
    }
    let body = cbor(&BidFromTheFuture {
        kind: "bid",
        auction: 3,
        replica: 0,
        reservation: "r-9",
        score: 10,
        expires_at_ms: NOW,
        gpu_models: vec!["a100"],
    });
    let frame = frame_with_body("bid", body, PROTOCOL_VERSION, 1);
    match decode(&frame, &mut ReplayGuard::default(), NOW).unwrap() {
        Body::Bid(bid) => {
            assert_eq!(bid.reservation, "r-9");
            assert!(!bid.has_image, "a missing optional field takes its default");
        }
        other => panic!("decoded as {other:?}"),
    }
}

#[test]
fn a_replayed_message_is_refused() {
    let frame = codec::encode(&bid(), &signer(), 42, NOW);
    let mut replays = ReplayGuard::default();
    assert!(decode(&frame, &mut replays, NOW).is_ok());
    assert_eq!(
        decode(&frame, &mut replays, NOW + 1_000),
        Err(DecodeError::Replay {
            sender: "spiffe://example.org/node/a".to_owned(),
            message_id: 42
        })
    );
    // Once the pair is forgotten, the timestamp check still refuses the old frame.
    assert!(matches!(
        decode(&frame, &mut replays, NOW + 10 * DEFAULT_TIME_WINDOW_MS),
        Err(DecodeError::OutsideWindow { .. })
    ));
    assert!(replays.len() <= 1);
}

#[test]
fn timestamps_outside_the_window_are_refused() {
    let frame = codec::encode(&bid(), &signer(), 1, NOW);
    for now in [
        NOW + DEFAULT_TIME_WINDOW_MS + 1,
        NOW - DEFAULT_TIME_WINDOW_MS - 1,
    ] {
        assert!(matches!(
            decode(&frame, &mut ReplayGuard::default(), now),
            Err(DecodeError::OutsideWindow { .. })
        ));
    }
    assert!(
        decode(
            &frame,
            &mut ReplayGuard::default(),
            NOW + DEFAULT_TIME_WINDOW_MS
        )
        .is_ok()
    );
}

#[test]
fn forged_and_altered_messages_are_refused() {
    // Signed by a node with another key, claiming to be node a.
    struct Impostor(KeyedChecksum);
    impl Signer for Impostor {
        fn id(&self) -> &str {
            "spiffe://example.org/node/a"
        }
        fn sign(&self, context: &str, bytes: &[u8]) -> Vec<u8> {
            self.0.sign(context, bytes)
        }
    }
    let impostor = Impostor(KeyedChecksum::new("spiffe://evil.org/node/x", 99));
    let forged = codec::encode(&bid(), &impostor, 1, NOW);
    assert!(matches!(
        decode(&forged, &mut ReplayGuard::default(), NOW),
        Err(DecodeError::BadSignature(_))
    ));

    // One changed byte inside the body.
    let good = codec::encode(&bid(), &signer(), 1, NOW);
    let at = good.windows(3).position(|w| w == b"r-1").unwrap();
    let mut altered = good.clone();
    altered[at + 2] = b'2';
    assert!(matches!(
        decode(&altered, &mut ReplayGuard::default(), NOW),
        Err(DecodeError::BadSignature(_))
    ));

    // A bid's signature presented under another kind (the signature context differs).
    let relabelled = frame_with_body("bid", cbor(&bid()), PROTOCOL_VERSION, 5);
    let at = relabelled.windows(3).position(|w| w == b"bid").unwrap();
    let mut as_cfp = relabelled.clone();
    as_cfp[at..at + 3].copy_from_slice(b"cfp");
    assert!(matches!(
        decode(&as_cfp, &mut ReplayGuard::default(), NOW),
        Err(DecodeError::BadSignature(_))
    ));
}

#[test]
fn size_shape_version_and_kind_errors_are_typed() {
    let mut huge = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
    huge.extend_from_slice(&[0u8; 16]);
    assert_eq!(
        decode(&huge, &mut ReplayGuard::default(), NOW),
        Err(DecodeError::TooLarge(MAX_FRAME_LEN + 1))
    );
    assert_eq!(
        codec::frame_len(u32::MAX.to_be_bytes()),
        Err(DecodeError::TooLarge(u32::MAX as usize))
    );

    let good = codec::encode(&bid(), &signer(), 1, NOW);
    assert_eq!(
        decode(&good[..good.len() - 1], &mut ReplayGuard::default(), NOW),
        Err(DecodeError::Truncated)
    );
    assert_eq!(
        decode(&good[..3], &mut ReplayGuard::default(), NOW),
        Err(DecodeError::Truncated)
    );

    let mut garbage = 8u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(b"\xff\xfenot cb");
    assert!(matches!(
        decode(&garbage, &mut ReplayGuard::default(), NOW),
        Err(DecodeError::Malformed(_))
    ));

    let future = frame_with_body("bid", cbor(&bid()), PROTOCOL_VERSION + 1, 1);
    assert_eq!(
        decode(&future, &mut ReplayGuard::default(), NOW),
        Err(DecodeError::UnsupportedVersion {
            got: PROTOCOL_VERSION + 1
        })
    );

    #[derive(serde::Serialize)]
    struct Gossip {
        kind: &'static str,
        rumours: u32,
    }
    let gossip = cbor(&Gossip {
        kind: "gossip",
        rumours: 3,
    });
    let unknown = frame_with_body("gossip", gossip, PROTOCOL_VERSION, 1);
    assert_eq!(
        decode(&unknown, &mut ReplayGuard::default(), NOW),
        Err(DecodeError::UnknownKind("gossip".to_owned()))
    );

    let release = Body::Release(Release {
        auction: 1,
        reservation: "r".to_owned(),
    });
    let mismatched = frame_with_body("bid", cbor(&release), PROTOCOL_VERSION, 1);
    assert!(matches!(
        decode(&mismatched, &mut ReplayGuard::default(), NOW),
        Err(DecodeError::KindMismatch { .. })
    ));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes, &mut ReplayGuard::default(), NOW);
        let _ = codec::decode(&bytes, &verifier(), &mut ReplayGuard::default(), NOW, DEFAULT_TIME_WINDOW_MS);
    }

    #[test]
    fn any_single_byte_change_is_refused_or_harmless(at in any::<proptest::sample::Index>(), flip in 1u8..=255) {
        let good = codec::encode(&bid(), &signer(), 1, NOW);
        let mut bad = good.clone();
        let i = at.index(bad.len());
        bad[i] ^= flip;
        // Either refused, or (a change CBOR reads the same way) decoded unchanged.
        if let Ok(body) = decode(&bad, &mut ReplayGuard::default(), NOW) {
            prop_assert_eq!(body, bid());
        }
    }
}

/// A logs reply filled to its bound, with the worst lines for overhead (empty, many) and
/// for size (long, multi-byte), still fits a frame and round-trips.
#[test]
fn a_full_logs_reply_fits_a_frame() {
    let line = |text: String| LogLine {
        stream: LogStream::Stderr,
        text,
    };
    for lines in [
        (0..100_000)
            .map(|_| line(String::new()))
            .collect::<Vec<_>>(),
        (0..100).map(|i| line("é".repeat(3_000 + i))).collect(),
    ] {
        let total = lines.len() as u64;
        let chunk = LogChunk::newest(lines);
        assert!(chunk.skipped > 0 && chunk.skipped < total);
        assert_eq!(chunk.lines.len() as u64 + chunk.skipped, total);
        assert!(
            chunk
                .lines
                .iter()
                .all(|l| l.text.len() <= MAX_LOG_LINE_BYTES)
        );
        let body = Body::LogsReply(LogsReply {
            request: 1,
            result: Ok(chunk),
        });
        let frame = codec::encode(&body, &signer(), 1, NOW);
        assert!(
            frame.len() <= MAX_FRAME_LEN,
            "{} bytes > {MAX_FRAME_LEN}",
            frame.len()
        );
        assert_eq!(
            decode(&frame, &mut ReplayGuard::default(), NOW).unwrap(),
            body
        );
    }
}
