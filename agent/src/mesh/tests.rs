//! Three agents' membership over real QUIC on loopback: they find each other through one
//! seed, and the survivors declare a stopped one dead.

use std::time::{Duration, Instant};

use parley_negotiation::membership::MembershipConfig;
use parley_negotiation::messages::{MemberState, NodeMeta};

use super::*;
use crate::transport::tests::Domain;

/// A host that is never awarded anything (these tests place no workloads).
struct NoWork;

impl Host for NoWork {
    async fn commit(&self, _: Assignment) -> Result<(), String> {
        Err("this test host runs nothing".to_owned())
    }
    async fn start(&self, _: String, _: u32) {}
    async fn forget(&self, _: String, _: &'static str) {}
    async fn adopt(&self, _: WorkloadSpec, _: String) -> Result<(), String> {
        Err("this test host runs nothing".to_owned())
    }
    async fn revoke(&self, _: String, _: u32, _: u64) {}
    async fn logs(&self, _: String, _: u32, _: LogWindow) -> Result<LogChunk, String> {
        Err("this test host runs nothing".to_owned())
    }
}

struct Running {
    id: String,
    view: watch::Receiver<Vec<Member>>,
    shutdown: CancellationToken,
    transport: Transport,
}

fn start(domain: &Domain, name: &str, seeds: Vec<SocketAddr>) -> Running {
    let (transport, inbox) = domain.transport(name);
    let address = transport.local_addr().unwrap().to_string();
    let meta = NodeMeta {
        agent_version: "test".to_owned(),
        protocol_min: 1,
        protocol_max: 1,
        arch: "amd64".to_owned(),
        address: Some(address),
        ..NodeMeta::default()
    };
    let config = MembershipConfig {
        probe_interval_ms: 200,
        probe_timeout_ms: 100,
        min_suspicion_ms: 1_000,
        ..MembershipConfig::default()
    };
    let membership = Membership::new(transport.id(), meta.clone(), config, unix_millis(), 7);
    let (view_tx, view) = watch::channel(Vec::new());
    let shutdown = CancellationToken::new();
    let (_commands, commands_rx) = mpsc::channel(1);
    tokio::spawn(run(
        transport.clone(),
        inbox,
        Negotiation {
            membership,
            meta,
            committed: Vec::new(),
            disk: None,
        },
        seeds,
        view_tx,
        Arc::new(NoWork),
        commands_rx,
        Checks {
            metrics: Arc::new(crate::metrics::Metrics::default()),
            policy: PolicyHandle::new(Policy::trust_domain_nodes("mesh.test"), None),
        },
        shutdown.clone(),
    ));
    Running {
        id: transport.id().to_owned(),
        view,
        shutdown,
        transport,
    }
}

fn states(node: &Running) -> Vec<(String, MemberState)> {
    node.view
        .borrow()
        .iter()
        .map(|m| (m.id.to_string(), m.state))
        .collect()
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_find_each_other_through_one_seed_and_declare_a_stopped_one_dead() {
    let domain = Domain::new("mesh.test");
    let a = start(&domain, "a", Vec::new());
    let seed = a.transport.local_addr().unwrap();
    let b = start(&domain, "b", vec![seed]);
    let c = start(&domain, "c", vec![seed]);

    for node in [&a, &b, &c] {
        until(&format!("{} sees two alive members", node.id), || {
            let seen = states(node);
            seen.len() == 2 && seen.iter().all(|(_, s)| *s == MemberState::Alive)
        })
        .await;
    }
    // b learned of c through gossip, never having been told its address.
    assert!(states(&b).iter().any(|(id, _)| *id == c.id));

    c.shutdown.cancel();
    c.transport.close().await;
    for node in [&a, &b] {
        until(&format!("{} declares c dead", node.id), || {
            states(node)
                .iter()
                .any(|(id, s)| *id == c.id && *s == MemberState::Dead)
        })
        .await;
        assert!(
            states(node)
                .iter()
                .all(|(id, s)| *id == c.id || *s == MemberState::Alive),
            "a live member was declared dead: {:?}",
            states(node)
        );
    }
    a.shutdown.cancel();
    b.shutdown.cancel();
}

mod authorization {
    use parley_negotiation::messages::{Cfp, Ping, Resources};

    use super::*;

    const OWNER: &str = "spiffe://td/node/owner";
    const HOST: &str = "spiffe://td/node/host";

    /// A policy granting `id` the `actions`, in every namespace.
    fn granting(id: &str, actions: &[&str]) -> Policy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        let actions: Vec<String> = actions.iter().map(|a| format!("{a:?}")).collect();
        std::fs::write(
            &path,
            format!(
                "[[allow]]\nids = [{id:?}]\nactions = [{}]\n",
                actions.join(", ")
            ),
        )
        .unwrap();
        Policy::load(&path).unwrap()
    }

    fn cfp() -> Body {
        Body::Cfp(Cfp {
            auction: 9,
            workload: "default/web".to_owned(),
            replica: 0,
            epoch: 1,
            image: "img".to_owned(),
            resources: Resources::default(),
            constraints: BTreeMap::new(),
            arch: None,
            spread_label: None,
            scoring: Default::default(),
            bid_deadline_ms: 0,
        })
    }

    #[test]
    fn a_call_for_proposals_from_an_owner_that_may_not_submit_is_declined_for_policy() {
        let metrics = Metrics::default();
        let mut announcer = Announcer::new(HOST, AnnouncerConfig::default(), 1);
        let mut outbox = Vec::new();
        let refused = authorize(
            OWNER,
            cfp(),
            &granting(OWNER, &["bid", "list"]),
            &mut announcer,
            &mut outbox,
            &metrics,
        );
        assert!(refused.is_none());
        assert_eq!(
            outbox,
            [(
                OWNER.to_owned(),
                Body::Decline(Decline {
                    auction: 9,
                    replica: 0,
                    reason: DeclineReason::PolicyDenied
                })
            )]
        );

        outbox.clear();
        let passed = authorize(
            OWNER,
            cfp(),
            &granting(OWNER, &["submit"]),
            &mut announcer,
            &mut outbox,
            &metrics,
        );
        assert_eq!(passed, Some(cfp()));
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_removal_the_sender_may_not_ask_for_is_dropped() {
        let metrics = Metrics::default();
        let mut announcer = Announcer::new(OWNER, AnnouncerConfig::default(), 1);
        let remove = Body::RemoveWorkload(RemoveWorkload {
            workload: "default/web".to_owned(),
        });
        let policy = granting(HOST, &["submit", "bid", "logs", "list"]);
        let mut outbox = Vec::new();
        assert!(
            authorize(
                HOST,
                remove.clone(),
                &policy,
                &mut announcer,
                &mut outbox,
                &metrics
            )
            .is_none()
        );
        assert!(outbox.is_empty());
        // Membership traffic is not a request: it always passes.
        let ping = Body::Ping(Ping {
            seq: 1,
            updates: Vec::new(),
        });
        assert_eq!(
            authorize(
                HOST,
                ping.clone(),
                &policy,
                &mut announcer,
                &mut outbox,
                &metrics
            ),
            Some(ping)
        );
        let text = crate::metrics::render(Some(&metrics), &Default::default());
        assert!(
            text.lines()
                .any(|l| l == "parley_policy_denials_total{action=\"remove\"} 1"),
            "{text}"
        );
    }
}
