use super::*;

const NOW: u64 = 1_800_000_000;
const DAY: u64 = 86_400;

fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).unwrap()
}

fn enroll(root: &Issuer, subject: &str, validity: Validity) -> Credential {
    let pending = PendingRequest::new(id(subject));
    let issued = root.issue(pending.request(), validity).unwrap();
    pending.accept(&issued, &root.public_key()).unwrap()
}

fn bundle(roots: &[&Issuer]) -> TrustBundle {
    let mut bundle = TrustBundle::new();
    for root in roots {
        bundle.add(root.id().trust_domain(), root.public_key());
    }
    bundle
}

struct Domain {
    root: Issuer,
    node: Credential,
    workload: Credential,
}

fn domain(td: &str) -> Domain {
    let root = Issuer::generate_root(td).unwrap();
    let node = enroll(
        &root,
        &format!("spiffe://{td}/node/edge-1"),
        Validity::starting(NOW, DAY),
    );
    let workload = enroll(
        &node.workload_issuer().unwrap(),
        &format!("spiffe://{td}/ns/prod/wl/web"),
        Validity::starting(NOW, 3600),
    );
    Domain {
        root,
        node,
        workload,
    }
}

#[test]
fn enrolled_keys_are_what_everyone_reconstructs() {
    let d = domain("example.org");
    let bundle = bundle(&[&d.root]);
    let node = bundle.verify_chain(&[d.node.cert().clone()], NOW).unwrap();
    assert_eq!(node.id, id("spiffe://example.org/node/edge-1"));
    assert_eq!(node.public_key, d.node.public_key());
    let chain = [d.node.cert().clone(), d.workload.cert().clone()];
    let workload = bundle.verify_chain(&chain, NOW).unwrap();
    assert_eq!(workload.id, id("spiffe://example.org/ns/prod/wl/web"));
    assert_eq!(workload.kind, CertKind::Workload);
    assert_eq!(workload.public_key, d.workload.public_key());
    assert_eq!(workload.not_after, NOW + 3600);
}

#[test]
fn the_issuer_sees_only_the_public_request() {
    // What travels is the ID and R_U; the secret k_U stays in PendingRequest. The issuer's
    // API takes a CertRequest, which has no field for a secret.
    let pending = PendingRequest::new(id("spiffe://example.org/node/a"));
    let wire = serde_json::to_value(pending.request()).unwrap();
    let fields: Vec<&String> = wire.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["point", "subject"]);
    assert_ne!(
        wire["point"].as_str().unwrap(),
        crate::cert::to_hex(&pending.secret_bytes())
    );
}

#[test]
fn a_pending_request_survives_a_round_trip_through_its_secret() {
    let root = Issuer::generate_root("example.org").unwrap();
    let pending = PendingRequest::new(id("spiffe://example.org/node/a"));
    let issued = root
        .issue(pending.request(), Validity::starting(NOW, DAY))
        .unwrap();
    let restored =
        PendingRequest::from_secret(pending.request().subject.clone(), &pending.secret_bytes())
            .unwrap();
    assert_eq!(restored.request(), pending.request());
    assert!(restored.accept(&issued, &root.public_key()).is_ok());
}

#[test]
fn issuers_issue_only_what_their_place_in_the_chain_allows() {
    let d = domain("example.org");
    let request = |subject: &str| PendingRequest::new(id(subject)).request().clone();
    let day = Validity::starting(NOW, DAY);
    for subject in [
        "spiffe://example.org/ns/prod/wl/web",
        "spiffe://example.org",
        "spiffe://example.org/node",
        "spiffe://example.org/node/a/b",
        "spiffe://other.org/node/a",
    ] {
        let err = d.root.issue(&request(subject), day).unwrap_err();
        assert!(
            matches!(err, IdentityError::NotAllowed { .. }),
            "root issued {subject}: {err}"
        );
    }
    let node_issuer = d.node.workload_issuer().unwrap();
    for subject in [
        "spiffe://example.org/node/edge-2",
        "spiffe://example.org/issuer/x",
        "spiffe://other.org/ns/prod/wl/web",
        "spiffe://example.org/ns/prod/web",
    ] {
        let err = node_issuer
            .issue(&request(subject), Validity::starting(NOW, 60))
            .unwrap_err();
        assert!(
            matches!(err, IdentityError::NotAllowed { .. }),
            "node issued {subject}: {err}"
        );
    }
    // Not past the node's own expiry.
    let err = node_issuer
        .issue(
            &request("spiffe://example.org/ns/prod/wl/web"),
            Validity::starting(NOW, 2 * DAY),
        )
        .unwrap_err();
    assert!(err.to_string().contains("outlast"), "{err}");
    // A workload cannot issue at all.
    assert!(d.workload.workload_issuer().is_err());
}

#[test]
fn a_tampered_answer_yields_no_key() {
    let root = Issuer::generate_root("example.org").unwrap();
    let pending = || PendingRequest::new(id("spiffe://example.org/node/a"));
    let first = pending();
    let mut issued = root
        .issue(first.request(), Validity::starting(NOW, DAY))
        .unwrap();
    let mut r = crate::cert::from_hex(&issued.reconstruction).unwrap();
    r[31] ^= 1;
    issued.reconstruction = crate::cert::to_hex(&r);
    assert!(matches!(
        first.accept(&issued, &root.public_key()),
        Err(IdentityError::KeyMismatch(_))
    ));

    // An answer for someone else's request, or from another root, does not fit either.
    let mine = pending();
    let theirs = pending();
    let issued_to_them = root
        .issue(theirs.request(), Validity::starting(NOW, DAY))
        .unwrap();
    assert!(mine.accept(&issued_to_them, &root.public_key()).is_err());
    let other_root = Issuer::generate_root("example.org").unwrap();
    let request = pending();
    let issued = other_root
        .issue(request.request(), Validity::starting(NOW, DAY))
        .unwrap();
    assert!(request.accept(&issued, &root.public_key()).is_err());
}

#[test]
fn chain_checks_each_rule_with_its_own_error() {
    let d = domain("example.org");
    let other = domain("other.org");
    let bundle = bundle(&[&d.root]);
    let node = d.node.cert().clone();
    let workload = d.workload.cert().clone();

    let err = bundle
        .verify_chain(&[other.node.cert().clone()], NOW)
        .unwrap_err();
    assert_eq!(
        err,
        IdentityError::UnknownTrustDomain("other.org".to_owned())
    );

    let err = bundle
        .verify_chain(std::slice::from_ref(&node), NOW + DAY + 61)
        .unwrap_err();
    assert!(matches!(err, IdentityError::Expired { .. }), "{err}");
    // Within the clock skew is fine, on both ends.
    assert!(
        bundle
            .verify_chain(std::slice::from_ref(&node), NOW + DAY + 59)
            .is_ok()
    );
    assert!(
        bundle
            .verify_chain(std::slice::from_ref(&node), NOW - 59)
            .is_ok()
    );
    let err = bundle
        .verify_chain(std::slice::from_ref(&node), NOW - 61)
        .unwrap_err();
    assert!(matches!(err, IdentityError::NotYetValid { .. }), "{err}");

    let err = bundle
        .verify_chain(&[node.clone(), workload.clone()], NOW + 3600 + 61)
        .unwrap_err();
    assert!(matches!(err, IdentityError::Expired { .. }), "{err}");

    // A workload certificate issued by another node of the same domain.
    let node2 = enroll(
        &d.root,
        "spiffe://example.org/node/edge-2",
        Validity::starting(NOW, DAY),
    );
    let err = bundle
        .verify_chain(&[node2.cert().clone(), workload.clone()], NOW)
        .unwrap_err();
    assert!(matches!(err, IdentityError::WrongIssuer { .. }), "{err}");

    // Shapes: nothing, a workload alone, three certificates, a workload as the first.
    assert!(matches!(
        bundle.verify_chain(&[], NOW),
        Err(IdentityError::BadChain(_))
    ));
    assert!(matches!(
        bundle.verify_chain(std::slice::from_ref(&workload), NOW),
        Err(IdentityError::BadChain(_))
    ));
    assert!(matches!(
        bundle.verify_chain(&[node.clone(), workload.clone(), workload.clone()], NOW),
        Err(IdentityError::BadChain(_))
    ));
}

#[test]
fn a_forged_certificate_reconstructs_a_key_nobody_holds() {
    let d = domain("example.org");
    let bundle = bundle(&[&d.root]);
    // Self-made: a node certificate "issued" by a key that is not the root.
    let impostor = Issuer::generate_root("example.org").unwrap();
    let forged = enroll(
        &impostor,
        "spiffe://example.org/node/edge-1",
        Validity::starting(NOW, DAY),
    );
    let chain = [forged.cert().clone()];
    // Its chain "verifies" structurally, as ECQV promises nothing before the key is used ...
    let reconstructed = bundle.verify_chain(&chain, NOW).unwrap();
    assert_ne!(reconstructed.public_key, forged.public_key());
    // ... and the first signature exposes it.
    let signature = forged.sign("bid", b"hello");
    assert_eq!(
        bundle.verify_signature("bid", b"hello", &signature, &chain, NOW),
        Err(IdentityError::BadSignature)
    );
}

#[test]
fn signatures_are_bound_to_signer_message_and_context() {
    let d = domain("example.org");
    let other = domain("other.org");
    let bundle = bundle(&[&d.root, &other.root]);
    let node_chain = [d.node.cert().clone()];
    let workload_chain = [d.node.cert().clone(), d.workload.cert().clone()];

    let signature = d.node.sign("bid", b"offer 42");
    let signer = bundle
        .verify_signature("bid", b"offer 42", &signature, &node_chain, NOW)
        .unwrap();
    assert_eq!(signer.id, id("spiffe://example.org/node/edge-1"));
    assert_eq!(
        bundle.verify_signature("award", b"offer 42", &signature, &node_chain, NOW),
        Err(IdentityError::BadSignature),
        "a bid signature passed as an award"
    );
    assert_eq!(
        bundle.verify_signature("bid", b"offer 43", &signature, &node_chain, NOW),
        Err(IdentityError::BadSignature)
    );
    assert_eq!(
        bundle.verify_signature("bid", b"offer 42", &signature, &workload_chain, NOW),
        Err(IdentityError::BadSignature),
        "the node's signature passed as its workload's"
    );
    assert_eq!(
        bundle.verify_signature("bid", b"offer 42", &[0u8; 10], &node_chain, NOW),
        Err(IdentityError::BadSignature)
    );

    let signature = d.workload.sign("logs", b"x");
    assert!(
        bundle
            .verify_signature("logs", b"x", &signature, &workload_chain, NOW)
            .is_ok()
    );
    // Federation: the other domain's signatures verify with the same bundle.
    let signature = other.node.sign("bid", b"y");
    let signer = bundle
        .verify_signature("bid", b"y", &signature, &[other.node.cert().clone()], NOW)
        .unwrap();
    assert_eq!(signer.id.trust_domain(), "other.org");
}

#[test]
fn credentials_reload_from_their_parts_and_refuse_a_wrong_key() {
    let d = domain("example.org");
    let reloaded = Credential::from_parts(
        d.node.cert().as_bytes(),
        &d.node.secret_bytes(),
        &d.root.public_key(),
    )
    .unwrap();
    assert_eq!(reloaded.public_key(), d.node.public_key());
    let err = Credential::from_parts(
        d.node.cert().as_bytes(),
        &d.workload.secret_bytes(),
        &d.root.public_key(),
    )
    .unwrap_err();
    assert!(matches!(err, IdentityError::KeyMismatch(_)), "{err}");
}
