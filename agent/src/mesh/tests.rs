//! Three agents' membership over real QUIC on loopback: they find each other through one
//! seed, and the survivors declare a stopped one dead.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use parley_negotiation::membership::MembershipConfig;
use parley_negotiation::messages::{
    Body, Decline, DeclineReason, MemberState, NodeMeta, RemoveWorkload,
};

use super::*;
use crate::transport::tests::Domain;

/// A host that is never awarded anything (these tests place no workloads).
struct NoWork;

impl Host for NoWork {
    async fn commit(&self, _: Assignment) -> Result<(), HostError> {
        Err(HostError::Store("this test host runs nothing".to_owned()))
    }
    async fn start(&self, _: String, _: u32) {}
    async fn forget(&self, _: String, _: &'static str) {}
    async fn adopt(&self, _: WorkloadSpec, _: String) -> Result<(), HostError> {
        Err(HostError::Store("this test host runs nothing".to_owned()))
    }
    async fn revoke(&self, _: String, _: u32, _: u64) {}
    async fn store_record(&self, _: String, _: parley_negotiation::messages::SignedStatement) {}
    async fn drop_record(&self, _: String) {}
    async fn logs(&self, _: String, _: u32, _: LogWindow) -> Result<LogChunk, HostError> {
        Err(HostError::NotRunning(
            "this test host runs nothing".to_owned(),
        ))
    }
    fn stored_registers(&self) -> Vec<((String, u32), parley_negotiation::register::SlotState)> {
        Vec::new()
    }
    async fn store_register(
        &self,
        _: String,
        _: u32,
        _: parley_negotiation::register::SlotState,
    ) -> Result<(), HostError> {
        Err(HostError::Store(
            "this test host keeps no registers".to_owned(),
        ))
    }
    async fn drop_register(&self, _: String, _: u32) {}
    async fn run_leased(&self, _: String, _: u32, _: u64, _: Duration) {}
    async fn fence(&self, _: String, _: u32, _: u64, _: String) {}
}

struct Running {
    id: String,
    view: watch::Receiver<Vec<Member>>,
    shutdown: CancellationToken,
    transport: Transport,
    heartbeat: Arc<crate::systemd::Heartbeat>,
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
    let (view_tx, view) = watch::channel(Vec::new());
    let shutdown = CancellationToken::new();
    let (_commands, commands_rx) = mpsc::channel(1);
    let heartbeat = crate::systemd::Heartbeat::new("negotiation", Duration::from_secs(1));
    tokio::spawn(run(
        transport.clone(),
        inbox,
        Negotiation {
            config: NegotiatorConfig {
                membership: config,
                ..NegotiatorConfig::default()
            },
            meta,
            committed: Vec::new(),
            records: Vec::new(),
            disk: None,
        },
        seeds,
        view_tx,
        Arc::new(NoWork),
        commands_rx,
        Checks {
            metrics: Arc::new(crate::metrics::Metrics::default()),
            policy: PolicyHandle::new(Policy::trust_domain_nodes("mesh.test"), None),
            heartbeat: Arc::clone(&heartbeat),
        },
        shutdown.clone(),
        TaskTracker::new(),
    ));
    Running {
        id: transport.id().to_owned(),
        view,
        shutdown,
        transport,
        heartbeat,
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

    // The watchdog's view: a running loop beats (it wakes for every probe), a stopped
    // one falls silent past its allowance.
    let now = crate::clock::unix_millis();
    assert!(
        c.heartbeat.is_fresh(now),
        "silent for {} ms",
        c.heartbeat.silent_ms(now)
    );
    c.shutdown.cancel();
    c.transport.close().await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!c.heartbeat.is_fresh(crate::clock::unix_millis()));
    assert!(a.heartbeat.is_fresh(crate::clock::unix_millis()));
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
    use parley_negotiation::negotiator::{Event, Negotiator};

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

    /// The negotiator of node `id` under `policy`, as the driver builds it.
    fn negotiator(id: &str, policy: Policy) -> Negotiator {
        let meta = NodeMeta {
            arch: "amd64".to_owned(),
            allocatable: Resources {
                cpu_millis: 4_000,
                memory_bytes: 8 << 30,
            },
            ..NodeMeta::default()
        };
        Negotiator::new(
            id,
            NegotiatorConfig::default(),
            meta,
            Vec::new(),
            1_000,
            1,
            Box::new(policy),
            Box::new(parley_negotiation::testing::ChecksumNotary::new(id, 1)),
        )
    }

    fn transmits(negotiator: &mut Negotiator) -> Vec<(String, Body)> {
        std::iter::from_fn(|| negotiator.poll_transmit()).collect()
    }

    /// Counts the negotiator's notices as the driver does.
    fn count(negotiator: &mut Negotiator, metrics: &Metrics) {
        while let Some(event) = negotiator.poll_event() {
            super::super::driver::observe(&event, metrics, None);
        }
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
        let mut host = negotiator(HOST, granting(OWNER, &["bid", "list"]));
        host.handle_message(1_000, OWNER, cfp());
        assert_eq!(
            transmits(&mut host),
            [(
                OWNER.to_owned(),
                Body::Decline(Decline {
                    auction: 9,
                    replica: 0,
                    reason: DeclineReason::PolicyDenied
                })
            )]
        );

        // Granted: the bidder sees the call and bids (a bid, not a policy decline).
        let mut host = negotiator(HOST, granting(OWNER, &["submit"]));
        host.handle_message(1_000, OWNER, cfp());
        let sent = transmits(&mut host);
        assert!(
            matches!(sent.as_slice(), [(to, Body::Bid(_))] if to == OWNER),
            "{sent:?}"
        );
    }

    #[test]
    fn a_removal_the_sender_may_not_ask_for_is_dropped() {
        let metrics = Metrics::default();
        let policy = granting(HOST, &["member", "submit", "bid", "logs", "list"]);
        let mut owner = negotiator(OWNER, policy);
        let remove = Body::RemoveWorkload(RemoveWorkload {
            workload: "default/web".to_owned(),
        });
        owner.handle_message(1_000, HOST, remove);
        assert!(transmits(&mut owner).is_empty());
        assert!(owner.poll_action().is_none(), "nothing is forgotten");
        count(&mut owner, &metrics);
        // The sender is a member: its probe passes, and is answered.
        let ping = Body::Ping(Ping {
            seq: 1,
            updates: Vec::new(),
        });
        owner.handle_message(1_000, HOST, ping);
        assert!(
            transmits(&mut owner)
                .iter()
                .any(|(to, body)| to == HOST && matches!(body, Body::Ack(_))),
        );
        while let Some(event) = owner.poll_event() {
            assert!(!matches!(event, Event::Denied { .. }), "{event:?}");
        }
        let text = crate::metrics::render(Some(&metrics), &Default::default());
        assert!(
            text.lines()
                .any(|l| l == "parley_policy_denials_total{action=\"remove\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn a_node_not_granted_membership_is_not_answered_or_heard() {
        let metrics = Metrics::default();
        let policy = granting(HOST, &["submit", "bid", "logs", "list"]);
        let mut owner = negotiator(OWNER, policy);
        owner.handle_message(
            1_000,
            HOST,
            Body::Ping(Ping {
                seq: 1,
                updates: Vec::new(),
            }),
        );
        assert!(transmits(&mut owner).is_empty(), "a probe was answered");
        assert!(
            owner.membership().member(HOST).is_none(),
            "the sender became a member"
        );
        count(&mut owner, &metrics);
        let text = crate::metrics::render(Some(&metrics), &Default::default());
        assert!(
            text.lines()
                .any(|l| l == "parley_policy_denials_total{action=\"member\"} 1"),
            "{text}"
        );
    }
}

mod shutdown {
    use std::sync::atomic::{AtomicBool, Ordering};

    use parley_negotiation::messages::{Award, Bid, Cfp, Ping, Resources};
    use parley_negotiation::workload::WorkloadName;
    use parley_store::Store;

    use super::*;
    use crate::daemon::shutdown::Shutdown;

    /// Stores awards in a real store, slowly (a disk under load), and says when a
    /// commit has started and when it has finished.
    struct SlowStore {
        store: Store,
        started: tokio::sync::Notify,
        finished: AtomicBool,
    }

    impl Host for SlowStore {
        async fn commit(&self, assignment: Assignment) -> Result<(), HostError> {
            self.started.notify_one();
            tokio::time::sleep(Duration::from_millis(800)).await;
            let tree = self
                .store
                .assignments::<Assignment>()
                .map_err(|e| HostError::Store(e.to_string()))?;
            tree.put("default/web#0", &assignment)
                .map_err(|e| HostError::Store(e.to_string()))?;
            self.store
                .flush()
                .await
                .map_err(|e| HostError::Store(e.to_string()))?;
            self.finished.store(true, Ordering::SeqCst);
            Ok(())
        }
        async fn start(&self, _: String, _: u32) {}
        async fn forget(&self, _: String, _: &'static str) {}
        async fn adopt(&self, _: WorkloadSpec, _: String) -> Result<(), HostError> {
            Ok(())
        }
        async fn revoke(&self, _: String, _: u32, _: u64) {}
        async fn store_record(&self, _: String, _: parley_negotiation::messages::SignedStatement) {}
        async fn drop_record(&self, _: String) {}
        fn stored_registers(
            &self,
        ) -> Vec<((String, u32), parley_negotiation::register::SlotState)> {
            Vec::new()
        }
        async fn store_register(
            &self,
            _: String,
            _: u32,
            _: parley_negotiation::register::SlotState,
        ) -> Result<(), HostError> {
            Ok(())
        }
        async fn drop_register(&self, _: String, _: u32) {}
        async fn run_leased(&self, _: String, _: u32, _: u64, _: Duration) {}
        async fn fence(&self, _: String, _: u32, _: u64, _: String) {}
        async fn logs(&self, _: String, _: u32, _: LogWindow) -> Result<LogChunk, HostError> {
            Err(HostError::NotRunning("no logs here".to_owned()))
        }
    }

    async fn next_body(inbox: &mut mpsc::Receiver<Inbound>) -> Body {
        tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .expect("a message within 5 s")
            .expect("the transport is up")
            .received
            .body
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_waits_for_an_award_being_stored_then_closes_the_endpoint_then_the_store() {
        let domain = Domain::new("mesh.test");
        let (owner, mut owner_inbox) = domain.transport("owner");
        let (host_transport, host_inbox) = domain.transport("host");
        let host_addr = host_transport.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let host = Arc::new(SlowStore {
            store: store.clone(),
            started: tokio::sync::Notify::new(),
            finished: AtomicBool::new(false),
        });
        let allocatable = Resources {
            cpu_millis: 4_000,
            memory_bytes: 8 << 30,
        };
        let meta = NodeMeta {
            agent_version: "test".to_owned(),
            protocol_min: 1,
            protocol_max: 1,
            arch: "amd64".to_owned(),
            allocatable,
            free: allocatable,
            address: Some(host_addr.to_string()),
            ..NodeMeta::default()
        };
        let shutdown = Shutdown::new();
        let (_commands, commands_rx) = mpsc::channel(1);
        let (view_tx, _view) = watch::channel(Vec::new());
        shutdown.spawn(run(
            host_transport.clone(),
            host_inbox,
            Negotiation {
                config: NegotiatorConfig::default(),
                meta,
                committed: Vec::new(),
                records: Vec::new(),
                disk: None,
            },
            Vec::new(),
            view_tx,
            Arc::clone(&host),
            commands_rx,
            Checks {
                metrics: Arc::new(Metrics::default()),
                policy: PolicyHandle::new(Policy::trust_domain_nodes("mesh.test"), None),
                heartbeat: crate::systemd::Heartbeat::new("negotiation", Duration::from_secs(30)),
            },
            shutdown.token.clone(),
            shutdown.tasks.clone(),
        ));

        // A hand-made owner: a call for proposals, the host's bid, an award with the spec.
        let host_id = host_transport.id().to_owned();
        let cfp = Cfp {
            auction: 1,
            workload: "default/web".to_owned(),
            replica: 0,
            epoch: 1,
            image: "img:1".to_owned(),
            resources: Resources {
                cpu_millis: 100,
                memory_bytes: 1 << 20,
            },
            constraints: BTreeMap::new(),
            arch: None,
            spread_label: None,
            scoring: Default::default(),
            bid_deadline_ms: crate::clock::unix_millis() + 5_000,
        };
        owner
            .send(&host_id, Some(host_addr), &Body::Cfp(cfp))
            .await
            .unwrap();
        let bid: Bid = loop {
            if let Body::Bid(bid) = next_body(&mut owner_inbox).await {
                break bid;
            }
        };
        let mut spec =
            WorkloadSpec::new(WorkloadName::new("web").unwrap(), "img:1", vec![], vec![]).unwrap();
        // What the call asked for: an award asking otherwise is refused.
        spec.resources = Resources {
            cpu_millis: 100,
            memory_bytes: 1 << 20,
        };
        let award = Award {
            auction: 1,
            workload: "default/web".to_owned(),
            replica: 0,
            epoch: 1,
            reservation: bid.reservation,
            spec: Some(spec),
            submitter: None,
            grant: None,
        };
        owner
            .send(&host_id, Some(host_addr), &Body::Award(award))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), host.started.notified())
            .await
            .expect("the host starts storing the award");

        // SIGTERM now, while the award is being stored.
        let drained = shutdown
            .drain(Duration::from_secs(10), Some(&host_transport), &store)
            .await
            .unwrap();
        assert_eq!(drained.abandoned, 0);
        assert!(
            host.finished.load(Ordering::SeqCst),
            "shutdown returned before the award being stored was stored"
        );

        // The endpoint is closed: a peer can no longer reach it.
        let refused = tokio::time::timeout(
            Duration::from_secs(10),
            owner.send(
                &host_id,
                Some(host_addr),
                &Body::Ping(Ping {
                    seq: 9,
                    updates: Vec::new(),
                }),
            ),
        )
        .await;
        assert!(
            !matches!(refused, Ok(Ok(()))),
            "a message reached the endpoint after shutdown"
        );

        // The store was closed after the write: reopened, it holds the award.
        drop(host);
        drop(store);
        let reopened = Store::open(dir.path().join("store")).unwrap();
        let stored: Option<Assignment> = reopened
            .assignments()
            .unwrap()
            .get("default/web#0")
            .unwrap();
        assert_eq!(stored.map(|a| a.reservation.is_empty()), Some(false));
    }
}
