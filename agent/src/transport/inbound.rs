//! What arrives: connections accepted (and refused: too many, wrong identity), and the
//! frames read from each, checked (size, rate, signature, sender, replay) before they
//! reach the negotiation loop.

use super::*;

pub(super) async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        // Before any state is kept: a client must prove it receives at its address
        // (QUIC Retry), so a flood from spoofed addresses costs one stateless packet
        // each; and handshakes at once are capped.
        if !incoming.remote_address_validated() {
            let _ = incoming.retry();
            continue;
        }
        let Ok(permit) = inner.handshakes.clone().try_acquire_owned() else {
            inner.refuse(Refusal::Busy);
            tracing::warn!(remote = %incoming.remote_address(), "refused a connection: too many handshakes at once");
            incoming.refuse();
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let remote = incoming.remote_address();
            let connection =
                match tokio::time::timeout(inner.limits.connect_timeout, incoming).await {
                    Ok(Ok(connection)) => connection,
                    Ok(Err(error)) => {
                        inner.refuse(Refusal::Handshake);
                        tracing::warn!(%remote, %error, "refused a connection");
                        return;
                    }
                    Err(_) => {
                        inner.refuse(Refusal::Handshake);
                        tracing::warn!(%remote, "refused a connection: handshake timed out");
                        return;
                    }
                };
            let protocol = connection
                .handshake_data()
                .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|data| data.protocol);
            if protocol.as_deref() == Some(tls::JOIN_ALPN) {
                let handed_over = inner
                    .enrollment
                    .as_ref()
                    .is_some_and(|joins| joins.try_send(connection.clone()).is_ok());
                if !handed_over {
                    tracing::warn!(%remote, "refused an enrollment connection: too many at once");
                    connection.close(2u32.into(), b"busy");
                }
                return;
            }
            match inner.peer_of(&connection) {
                Ok(peer) => {
                    tracing::debug!(%remote, peer = %peer.id, "peer connected");
                    // A refusal is counted and logged by `register`.
                    let _ = inner.register(peer, connection);
                }
                Err(error) => {
                    inner.refuse(Refusal::Handshake);
                    tracing::warn!(%remote, %error, "refused a connection");
                    connection.close(1u32.into(), b"identity refused");
                }
            }
        });
    }
}

/// A token bucket: `rate` per second, up to `burst` at once.
struct RateLimit {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl RateLimit {
    fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub(super) async fn read_loop(
    inner: Arc<Inner>,
    peer: VerifiedIdentity,
    connection: quinn::Connection,
) {
    let mut rate = RateLimit::new(inner.limits.frames_per_second, inner.limits.frame_burst);
    // Checked against the revocations at every frame: encoded once, not per frame.
    let key = parley_identity::credential::encode_public_key(&peer.public_key);
    let remote = connection.remote_address();
    loop {
        let mut stream = match connection.accept_uni().await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(peer = %peer.id, %error, "connection ended");
                break;
            }
        };
        if inner.revoked.is_revoked_encoded(peer.id.as_str(), &key) {
            tracing::warn!(peer = %peer.id, "closing a connection: its key was revoked");
            connection.close(4u32.into(), b"identity revoked");
            break;
        }
        if !rate.allow() {
            inner.refuse(Refusal::RateLimited);
            let _ = stream.stop(2u32.into());
            continue;
        }
        // The cap is enforced while reading: a longer stream is cut off, never buffered.
        let read = tokio::time::timeout(
            inner.limits.frame_timeout,
            stream.read_to_end(codec::MAX_FRAME_LEN + 4),
        )
        .await;
        let frame = match read {
            Ok(Ok(frame)) => frame,
            Ok(Err(quinn::ReadToEndError::TooLong)) => {
                inner.refuse(Refusal::TooLarge);
                tracing::warn!(peer = %peer.id, "refused a frame over {} bytes", codec::MAX_FRAME_LEN);
                continue;
            }
            Ok(Err(error)) => {
                tracing::debug!(peer = %peer.id, %error, "stream failed");
                continue;
            }
            Err(_) => {
                inner.refuse(Refusal::Slow);
                continue;
            }
        };
        let decoded = {
            let mut replays = lock(&inner.replays);
            codec::decode_frame(
                &frame,
                &ConnectionPeer(&peer),
                &mut replays,
                unix_ms(),
                codec::DEFAULT_TIME_WINDOW_MS,
            )
        };
        match decoded {
            Ok(received) => {
                if inner
                    .inbound
                    .send(Inbound { received, remote })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Err(error) => {
                let refusal = Refusal::of(&error);
                inner.refuse(refusal);
                tracing::warn!(peer = %peer.id, %error, reason = refusal.code(), "refused a message");
            }
        }
    }
    {
        let mut live = lock(&inner.live);
        if let Some(count) = live.get_mut(peer.id.as_str()) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                live.remove(peer.id.as_str());
            }
        }
    }
    let mut peers = lock(&inner.peers);
    if peers
        .get(peer.id.as_str())
        .is_some_and(|c| c.stable_id() == connection.stable_id())
    {
        peers.remove(peer.id.as_str());
    }
}
