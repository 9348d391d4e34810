//! Zero trust on the wire: a hand-made hostile peer ([`parley_e2e::hostile`]) attacks real
//! agents on loopback, and each attack is refused where it arrives. Every test also shows
//! the same peer succeeding where it is entitled to, so that a refusal is the agent's
//! doing and not a broken harness.

use std::time::Duration;

use parley_e2e::TrustDomain;
use parley_e2e::hostile::{HostilePeer, PeerIdentity};
use parley_e2e::mesh::{address, mesh_agent, replicas_on, svid_in, wait_until};
use parley_negotiation::messages::{Body, Ping};

/// Sends a probe and waits for the agent's answer: what an accepted member gets.
fn answers_a_probe(peer: &mut HostilePeer) -> bool {
    peer.send(&Body::Ping(Ping {
        seq: 7,
        updates: Vec::new(),
    }))
    .expect("send a probe");
    peer.receive_until(
        Duration::from_secs(10),
        |received| matches!(&received.body, Body::Ack(ack) if ack.seq == 7),
    )
    .is_some()
}

/// Class 3 of the zero-trust issue: the SVID mounted into every container, private key
/// included, verifies against the trust domain's root. Before node and workload
/// credentials were told apart at the handshake, a process in any container could join
/// the mesh with it, gossip, and bid.
#[test]
fn a_container_holding_its_workload_identity_cannot_join_the_mesh() {
    let domain = TrustDomain::new("zt-svid.e2e");
    let agent = mesh_agent("zt-svid", &domain.enroll("a"), &[], &[]);
    let addr = address(&agent).parse().expect("an IP:PORT address");

    // The harness speaks the protocol: a node identity is answered.
    let mut member = HostilePeer::connect(PeerIdentity::node(&domain.enroll("b")), addr)
        .expect("a node connects");
    assert!(
        answers_a_probe(&mut member),
        "the agent did not answer a node's probe:\n{}",
        agent.log()
    );

    agent.run_sleeper("svid").ok();
    wait_until("the replica runs", Duration::from_secs(60), || {
        replicas_on(&agent, "svid").len() == 1
    });
    let container = replicas_on(&agent, "svid").remove(0);
    let svid = PeerIdentity::workload(&svid_in(&agent, &container));
    assert_eq!(svid.id(), "spiffe://zt-svid.e2e/ns/default/wl/svid");

    let mut intruder = HostilePeer::connect(svid, addr).expect("the TLS handshake itself runs");
    let _ = intruder.send(&Body::Ping(Ping {
        seq: 8,
        updates: Vec::new(),
    }));
    let refused = intruder.refused_within(Duration::from_secs(10));
    assert!(
        refused.is_some(),
        "a workload identity stayed connected as a mesh peer"
    );
    wait_until(
        "the agent logs why it refused the workload identity",
        Duration::from_secs(10),
        || {
            agent.log().contains(
                "refused a peer's identity error=spiffe://zt-svid.e2e/ns/default/wl/svid \
                 is a workload identity; only node identities (/node/NAME) are mesh peers",
            )
        },
    );
}
