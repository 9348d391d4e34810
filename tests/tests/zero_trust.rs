//! Zero trust on the wire: a hand-made hostile peer ([`parley_e2e::hostile`]) attacks real
//! agents on loopback, and each attack is refused where it arrives. Every test also shows
//! the same peer succeeding where it is entitled to, so that a refusal is the agent's
//! doing and not a broken harness.

use std::time::Duration;

use parley_e2e::TrustDomain;
use parley_e2e::hostile::{HostilePeer, PeerIdentity};
use parley_e2e::mesh::{address, mesh_agent, replicas_on, svid_in, wait_until};
use parley_negotiation::messages::{Body, Instance, Ping};

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

/// Class 12 of the zero-trust issue (instance reports were not authorized): a member that
/// may not host the namespace reports a replica it does not run. Before every message
/// kind went through the policy, the owner took the report at face value and answered it.
#[test]
fn a_phantom_instance_from_a_node_that_may_not_host_is_refused() {
    let domain = TrustDomain::new("zt-phantom.e2e");
    let policy = domain.write_file(
        "policy.toml",
        "[[allow]]\n\
         ids = [\"spiffe://zt-phantom.e2e/node/a\"]\n\
         actions = [\"member\", \"submit\", \"bid\", \"logs\", \"remove\", \"list\"]\n\
         \n\
         [[allow]]\n\
         ids = [\"spiffe://zt-phantom.e2e/node/x\"]\n\
         actions = [\"member\"]\n",
    );
    let policy_flag = format!("--policy={}", policy.display());
    let agent = mesh_agent("zt-phantom", &domain.enroll("a"), &[], &[&policy_flag]);
    let addr = address(&agent).parse().expect("an IP:PORT address");
    agent.run_sleeper("web").ok();
    wait_until("the replica runs", Duration::from_secs(60), || {
        replicas_on(&agent, "web").len() == 1
    });
    let running = replicas_on(&agent, "web");

    let mut intruder = HostilePeer::connect(PeerIdentity::node(&domain.enroll("x")), addr)
        .expect("a node connects");
    assert!(
        answers_a_probe(&mut intruder),
        "x may be a member, but its probe was not answered:\n{}",
        agent.log()
    );
    intruder
        .send(&Body::Instance(Instance {
            workload: "default/web".to_owned(),
            replica: 0,
            epoch: 99,
            reservation: "forged".to_owned(),
            failure_domain: None,
        }))
        .expect("send the report");
    let answered = intruder.receive_until(Duration::from_secs(5), |received| {
        matches!(received.body, Body::Revoke(_))
    });
    assert!(
        answered.is_none(),
        "the owner acted on a report it should have refused: {answered:?}"
    );
    wait_until(
        "the owner logs the refusal",
        Duration::from_secs(10),
        || {
            agent
                .log()
                .contains("may not bid for workloads in namespace")
        },
    );
    assert_eq!(
        replicas_on(&agent, "web"),
        running,
        "the real replica changed"
    );
}
