//! Fuzz targets: every decoder a peer or a user can reach, each a function that must
//! return (an error or a value) for any input, never panic or hang.
//!
//! `tests/fuzz.rs` runs each target over its committed corpus (`fuzz/corpus/TARGET/`)
//! and the seeds below, then over mutations of them for a bounded time, in every test
//! run (CI included). The same functions can be driven by a coverage-guided fuzzer.
//!
//! The targets call the very functions the agent uses: a target that parsed with a
//! copy of the decoder would prove nothing.

use std::path::Path;

use parley_identity::cert::ImplicitCert;
use parley_identity::{Issuer, PendingRequest, SpiffeId, TrustBundle, Validity};
use parley_negotiation::codec::{self, ReplayGuard};
use parley_negotiation::membership::{Membership, MembershipConfig, Notary as _, StatementKind};
use parley_negotiation::messages::{
    Body, MemberState, MemberUpdate, NodeMeta, Ping, Statement, Sync,
};
use parley_negotiation::testing::{ChecksumNotary, ChecksumVerifier, KeyedChecksum};

/// A fuzz target: its name (the corpus directory) and the function.
pub type Target = (&'static str, fn(&[u8]));

/// The clock every target reads, so that runs replay.
const NOW_MS: u64 = 1_800_000_000_000;
/// The cheap signatures' shared seed in frames the targets decode.
const SEED: u64 = 7;

/// Every target.
pub const TARGETS: &[Target] = &[
    ("frame", frame),
    ("body", body),
    ("join-request", join_request),
    ("join-reply", join_reply),
    ("join-token", join_token),
    ("implicit-cert", implicit_cert),
    ("peer-certificate", peer_certificate),
    ("workload-spec", workload_spec),
    ("config", config),
    ("policy", policy),
    ("gossip", gossip),
    ("svid-file", svid_file),
];

/// A frame off the wire: length prefix, envelope, signature, replay, body.
pub fn frame(data: &[u8]) {
    let verifier = ChecksumVerifier { seed: SEED };
    let _ = codec::decode_frame(
        data,
        &verifier,
        &mut ReplayGuard::default(),
        NOW_MS,
        codec::DEFAULT_TIME_WINDOW_MS,
    );
}

/// A message body, as an authentic envelope would carry it (the frame target rarely
/// gets past the signature with mutated bytes). The first byte picks the kind named.
pub fn body(data: &[u8]) {
    const KINDS: &[&str] = &[
        "cfp",
        "bid",
        "decline",
        "award",
        "accept",
        "reject",
        "release",
        "instance",
        "revoke",
        "ping",
        "ping-req",
        "ack",
        "sync",
        "workload-query",
        "workload-report",
        "remove-workload",
        "logs-request",
        "logs-reply",
        "handover",
    ];
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let kind = KINDS[usize::from(*first) % KINDS.len()];
    if let Ok(body) = codec::decode_body(rest, kind) {
        // What decodes must survive the checks the negotiator runs first.
        if let Body::Award(award) = &body
            && let Some(spec) = &award.spec
        {
            let _ = spec.validate();
        }
    }
}

/// An enrollment or renewal request, as the issuer reads it.
pub fn join_request(data: &[u8]) {
    crate::enroll::join::fuzz_request(data);
}

/// An issuer's answer, as a joining or renewing node reads it.
pub fn join_reply(data: &[u8]) {
    crate::enroll::join::fuzz_reply(data);
}

/// A join token, as `parley join` reads it.
pub fn join_token(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<crate::enroll::join::JoinToken>();
    }
}

/// An implicit certificate.
pub fn implicit_cert(data: &[u8]) {
    let _ = ImplicitCert::decode(data);
}

/// A peer's X.509 wrapper, as the TLS verifier checks it.
pub fn peer_certificate(data: &[u8]) {
    let _ = parley_identity::tls::verify_peer_certificate(data, &TrustBundle::new(), NOW_MS / 1000);
}

/// A workload spec from the local API (`POST /v1/workloads`).
pub fn workload_spec(data: &[u8]) {
    if let Ok(spec) = serde_json::from_slice::<parley_negotiation::WorkloadSpec>(data) {
        let _ = spec.validate();
    }
}

/// The agent's config file.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::FileConfig::load_str(text, Path::new("fuzz.toml"));
    }
}

/// A policy file.
pub fn policy(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::policy::Policy::parse(text, Path::new("fuzz.toml"));
    }
}

/// Membership gossip from a peer, applied to a membership table: the members' signed
/// statements inside are decoded and checked (keyed checksums of the seeds' seed), then
/// the table is driven once, as a node would after the message.
pub fn gossip(data: &[u8]) {
    let Ok(Body::Sync(sync)) = codec::decode_body(data, "sync") else {
        return;
    };
    let me = "spiffe://td/node/me";
    let mut membership = Membership::new(
        me,
        NodeMeta::default(),
        MembershipConfig::default(),
        NOW_MS,
        1,
        Box::new(ChecksumNotary::new(me, SEED)),
    );
    membership.handle_sync(NOW_MS, "spiffe://td/node/b", &sync);
    membership.handle_sync(NOW_MS, "spiffe://td/node/a", &sync);
    membership.handle_timeout(NOW_MS + 1_000);
    while membership.poll_transmit().is_some() {}
}

/// A workload identity file, as `parley identity verify-svid` reads it: decoded, then its
/// chain and grant checked (against an empty bundle, which refuses every chain; the
/// decoding of certificates and grants is what is under test).
pub fn svid_file(data: &[u8]) {
    if let Ok(file) = serde_json::from_slice::<crate::enroll::workload::SvidFile>(data) {
        let _ = crate::enroll::grant::verify_svid(&file, &TrustBundle::new(), NOW_MS / 1000);
    }
}

/// Seeds made in code, for the binary formats (authentic frames, bodies, certificates):
/// mutations of valid inputs reach deeper than random bytes.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let meta = NodeMeta {
        agent_version: "fuzz".to_owned(),
        arch: "amd64".to_owned(),
        address: Some("127.0.0.1:7946".to_owned()),
        ..NodeMeta::default()
    };
    let sync = Body::Sync(Sync {
        updates: vec![MemberUpdate {
            node: "spiffe://td/node/a".to_owned(),
            state: MemberState::Alive,
            incarnation: 3,
            meta: Some(std::sync::Arc::new(meta.clone())),
            statement: Some(std::sync::Arc::new(
                ChecksumNotary::new("spiffe://td/node/a", SEED).sign(
                    StatementKind::Member,
                    Statement {
                        node: "spiffe://td/node/a".to_owned(),
                        incarnation: 3,
                        meta,
                    }
                    .encode(),
                ),
            )),
        }],
        reply: true,
    });
    let ping = Body::Ping(Ping {
        seq: 1,
        updates: Vec::new(),
    });
    match target {
        "frame" => {
            let signer = KeyedChecksum::new("spiffe://td/node/a", SEED);
            vec![
                codec::encode(&sync, &signer, 1, NOW_MS),
                codec::encode(&ping, &signer, 2, NOW_MS),
            ]
        }
        "gossip" => vec![codec::encode_body(&sync)],
        "body" => {
            let mut seeds = Vec::new();
            for (index, body) in [(12u8, &sync), (9, &ping)] {
                let mut bytes = vec![index];
                bytes.extend(codec::encode_body(body));
                seeds.push(bytes);
            }
            seeds
        }
        "implicit-cert" | "peer-certificate" => {
            let Ok(root) = Issuer::generate_root("td") else {
                return Vec::new();
            };
            let Ok(id) = SpiffeId::parse("spiffe://td/node/a") else {
                return Vec::new();
            };
            let pending = PendingRequest::new(id);
            let Ok(issued) = root.issue(pending.request(), Validity::starting(NOW_MS / 1000, 3600))
            else {
                return Vec::new();
            };
            let Ok(credential) = pending.accept(&issued, &root.public_key()) else {
                return Vec::new();
            };
            if target == "implicit-cert" {
                return vec![credential.cert().as_bytes().to_vec()];
            }
            parley_identity::tls::TlsIdentity::new(&credential, &[credential.cert().clone()])
                .map(|tls| vec![tls.certificate().to_vec()])
                .unwrap_or_default()
        }
        _ => Vec::new(),
    }
}
