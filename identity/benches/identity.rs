//! Costs of the identity operations: issue, accept (private-key reconstruction),
//! public-key reconstruction (chain check), sign, and verify (reconstruction plus ECDSA).
//! Plain ECDSA P-256 sign and verify with a known key, measured in the same run, are the
//! baseline.
//!
//!     cargo bench -p parley-identity --bench identity

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use parley_identity::{Issuer, PendingRequest, SpiffeId, TrustBundle, Validity};

const NOW: u64 = 1_800_000_000;

fn bench(c: &mut Criterion) {
    let root = Issuer::generate_root("example.org").expect("root");
    let subject = SpiffeId::parse("spiffe://example.org/node/edge-1").expect("id");
    let validity = Validity::starting(NOW, 86_400);
    let mut bundle = TrustBundle::new();
    bundle.add("example.org", root.public_key());
    let pending = PendingRequest::new(subject.clone());
    let issued = root.issue(pending.request(), validity).expect("issue");
    let credential = pending.accept(&issued, &root.public_key()).expect("accept");
    let chain = [credential.cert().clone()];
    let message = [7u8; 256];
    let signature = credential.sign("bid", &message);

    let baseline_key = SigningKey::random(&mut rand_core::OsRng);
    let baseline_verifier = VerifyingKey::from(&baseline_key);
    let baseline_signature: Signature = baseline_key.sign(&message);

    let mut group = c.benchmark_group("identity");
    group.bench_function("baseline: ECDSA P-256 sign", |b| {
        b.iter(|| -> Signature { baseline_key.sign(black_box(&message)) })
    });
    group.bench_function("baseline: ECDSA P-256 verify", |b| {
        b.iter(|| {
            baseline_verifier
                .verify(black_box(&message), &baseline_signature)
                .expect("verify")
        })
    });
    group.bench_function("issue (root)", |b| {
        let request = PendingRequest::new(subject.clone()).request().clone();
        b.iter(|| root.issue(black_box(&request), validity).expect("issue"))
    });
    group.bench_function("request + accept (requester)", |b| {
        b.iter_batched(
            || {
                let pending = PendingRequest::new(subject.clone());
                let issued = root.issue(pending.request(), validity).expect("issue");
                (pending, issued)
            },
            |(pending, issued)| pending.accept(&issued, &root.public_key()).expect("accept"),
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("reconstruct (verify chain)", |b| {
        b.iter(|| bundle.verify_chain(black_box(&chain), NOW).expect("chain"))
    });
    group.bench_function("sign", |b| {
        b.iter(|| credential.sign("bid", black_box(&message)))
    });
    group.bench_function("verify (chain + signature)", |b| {
        b.iter(|| {
            bundle
                .verify_signature("bid", black_box(&message), &signature, &chain, NOW)
                .expect("verify")
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
