//! SWIM membership driven over a perfect in-memory network: joining through a seed,
//! metadata spread, failure detection, and refutation of a false suspicion.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use parley_negotiation::membership::{
    Interner, Membership, MembershipConfig, MembershipEvent, Notary as _, StatementKind,
};
use parley_negotiation::messages::{
    Ack, Body, MemberState, MemberUpdate, NodeMeta, Resources, SignedStatement, Statement, Sync,
};
use parley_negotiation::testing::ChecksumNotary;

fn meta(arch: &str) -> NodeMeta {
    NodeMeta {
        agent_version: "test".to_owned(),
        protocol_min: 1,
        protocol_max: 1,
        arch: arch.to_owned(),
        allocatable: Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
        },
        ..NodeMeta::default()
    }
}

/// A member signing its statements with a keyed checksum every test member can check.
fn membership(id: impl Into<String>, meta: NodeMeta, seed: u64) -> Membership {
    let id = id.into();
    let notary = Box::new(ChecksumNotary::new(id.clone(), NOTARY_SEED));
    Membership::new(id, meta, MembershipConfig::default(), 0, seed, notary)
}

const NOTARY_SEED: u64 = 0xC0DE;

struct Net {
    nodes: Vec<Membership>,
    down: Vec<bool>,
    /// Messages dropped when both ends are in different groups.
    cut: Option<Vec<usize>>,
    now: u64,
    events: Vec<(usize, MembershipEvent)>,
}

impl Net {
    fn new(n: usize) -> Self {
        let nodes: Vec<Membership> = (0..n)
            .map(|i| {
                membership(
                    format!("n{i}"),
                    meta(if i == 1 { "arm64" } else { "amd64" }),
                    i as u64 + 1,
                )
            })
            .collect();
        let mut net = Self {
            down: vec![false; n],
            nodes,
            cut: None,
            now: 0,
            events: Vec::new(),
        };
        for i in 1..n {
            net.nodes[i].join(&["n0".to_owned()]);
        }
        net
    }

    fn index(id: &str) -> usize {
        id[1..].parse().unwrap()
    }

    /// Runs until `until`, delivering messages instantly and firing timers in order.
    fn run(&mut self, until: u64) {
        loop {
            let mut queue: VecDeque<(usize, usize, Body)> = VecDeque::new();
            for (i, node) in self.nodes.iter_mut().enumerate() {
                while let Some((to, body)) = node.poll_transmit() {
                    queue.push_back((i, Self::index(&to), body));
                }
            }
            if queue.is_empty() {
                let next = self
                    .nodes
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !self.down[*i])
                    .filter_map(|(_, n)| n.poll_timeout())
                    .min();
                match next {
                    Some(t) if t <= until => {
                        self.now = t.max(self.now);
                        for (i, node) in self.nodes.iter_mut().enumerate() {
                            if !self.down[i] && node.poll_timeout().is_some_and(|t| t <= self.now) {
                                node.handle_timeout(self.now);
                            }
                        }
                    }
                    _ => return,
                }
            }
            while let Some((from, to, body)) = queue.pop_front() {
                let blocked = self
                    .cut
                    .as_ref()
                    .is_some_and(|group| group.contains(&from) != group.contains(&to));
                if self.down[to] || self.down[from] || blocked {
                    continue;
                }
                let from_id = format!("n{from}");
                let node = &mut self.nodes[to];
                match &body {
                    Body::Ping(p) => node.handle_ping(self.now, &from_id, p),
                    Body::PingReq(p) => node.handle_ping_req(self.now, &from_id, p),
                    Body::Ack(a) => node.handle_ack(self.now, &from_id, a),
                    Body::Sync(s) => node.handle_sync(self.now, &from_id, s),
                    _ => {}
                }
            }
            for (i, node) in self.nodes.iter_mut().enumerate() {
                while let Some(event) = node.poll_event() {
                    self.events.push((i, event));
                }
            }
        }
    }

    fn state(&self, observer: usize, of: usize) -> Option<MemberState> {
        self.nodes[observer]
            .member(&format!("n{of}"))
            .map(|m| m.state)
    }
}

#[test]
fn nodes_joining_through_a_seed_learn_everyone_and_their_metadata() {
    let mut net = Net::new(6);
    net.run(5_000);
    for observer in 0..6 {
        for of in (0..6).filter(|o| *o != observer) {
            assert_eq!(
                net.state(observer, of),
                Some(MemberState::Alive),
                "n{observer} about n{of}"
            );
        }
        let arm = net.nodes[observer]
            .member("n1")
            .and_then(|m| m.meta.clone());
        if observer != 1 {
            assert_eq!(
                arm.map(|m| m.arch.clone()),
                Some("arm64".to_owned()),
                "n{observer} lacks n1's metadata"
            );
        }
    }
}

#[test]
fn a_crashed_node_is_suspected_then_declared_dead_by_everyone() {
    let mut net = Net::new(8);
    net.run(5_000);
    net.down[3] = true;
    let crashed_at = net.now;
    net.run(crashed_at + 30_000);
    for observer in (0..8).filter(|o| *o != 3) {
        assert_eq!(
            net.state(observer, 3),
            Some(MemberState::Dead),
            "n{observer}"
        );
    }
    let died: Vec<usize> = net
        .events
        .iter()
        .filter(|(_, e)| *e == MembershipEvent::Died("n3".to_owned()))
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(
        died.len(),
        7,
        "every survivor reports the death once: {died:?}"
    );
    // Nobody else was declared dead.
    assert!(
        net.events
            .iter()
            .all(|(_, e)| !matches!(e, MembershipEvent::Died(n) if n != "n3"))
    );
}

#[test]
fn a_partitioned_node_refutes_and_rejoins_after_the_partition_heals() {
    let mut net = Net::new(5);
    net.run(5_000);
    net.cut = Some(vec![4]);
    let start = net.now;
    net.run(start + 30_000);
    assert_eq!(net.state(0, 4), Some(MemberState::Dead));
    net.cut = None;
    net.run(start + 60_000);
    for observer in 0..4 {
        assert_eq!(
            net.state(observer, 4),
            Some(MemberState::Alive),
            "n{observer} still holds n4 dead"
        );
        assert_eq!(
            net.state(4, observer),
            Some(MemberState::Alive),
            "n4 still holds n{observer} dead"
        );
    }
}

#[test]
fn new_metadata_spreads_under_a_new_incarnation() {
    let mut net = Net::new(5);
    net.run(5_000);
    let mut updated = meta("amd64");
    updated.labels.insert("rack".to_owned(), "r9".to_owned());
    net.nodes[2].set_meta(updated);
    let now = net.now;
    net.run(now + 10_000);
    for observer in [0, 1, 3, 4] {
        let labels = net.nodes[observer]
            .member("n2")
            .and_then(|m| m.meta.clone())
            .map(|m| m.labels.clone());
        assert_eq!(
            labels.and_then(|l| l.get("rack").cloned()),
            Some("r9".to_owned()),
            "n{observer}"
        );
    }
}

/// `n` members' announcements, as a converged view would hold them.
fn announcements(n: usize) -> Vec<MemberUpdate> {
    (0..n)
        .map(|i| membership(format!("m{i}"), meta("amd64"), 1).announcement())
        .collect()
}

/// Runs `node` alone until `until`, answering every probe at once (so nobody is ever
/// suspected), and returns what it sent besides probes, with the time.
fn run_alone(node: &mut Membership, mut now: u64, until: u64) -> Vec<(u64, String, Body)> {
    let mut sent = Vec::new();
    while let Some(next) = node.poll_timeout().filter(|t| *t <= until) {
        now = next.max(now);
        node.handle_timeout(now);
        while let Some((to, body)) = node.poll_transmit() {
            match body {
                Body::Ping(ping) => node.handle_ack(
                    now,
                    &to,
                    &Ack {
                        seq: ping.seq,
                        updates: Vec::new(),
                    },
                ),
                other => sent.push((now, to, other)),
            }
        }
    }
    sent
}

#[test]
fn tables_sharing_an_interner_hold_one_copy_of_each_member() {
    let source = membership("a", meta("arm64"), 1);
    // Each receiver decodes its own copy of the announcement, as from the wire.
    let decoded = || {
        let mut update = source.announcement();
        update.meta = update.meta.map(|m| Arc::new((*m).clone()));
        update.statement = update.statement.map(|s| Arc::new((*s).clone()));
        Sync {
            updates: vec![update],
            reply: false,
        }
    };
    let interner = Interner::default();
    let mut tables: Vec<Membership> = (0..3)
        .map(|i| membership(format!("t{i}"), meta("amd64"), 2))
        .collect();
    tables[0].share_interner(interner.clone());
    tables[1].share_interner(interner);
    for table in &mut tables {
        table.handle_sync(10, "a", &decoded());
    }
    let member = |t: usize| tables[t].member("a").expect("learned a").clone();
    let meta_of = |t: usize| member(t).meta.expect("with its metadata");
    assert!(Arc::ptr_eq(&member(0).id, &member(1).id));
    assert!(Arc::ptr_eq(&meta_of(0), &meta_of(1)));
    // Without the shared interner, the copy stays a copy.
    assert!(!Arc::ptr_eq(&meta_of(0), &meta_of(2)));
    assert_eq!(meta_of(0), meta_of(2));
}

#[test]
fn a_converged_start_knows_everyone_quietly_and_probes_them() {
    let mut node = membership("me", meta("amd64"), 9);
    let mut everyone = announcements(50);
    everyone.push(node.announcement());
    node.assume_known(0, &everyone);
    assert_eq!(node.member_count(), 50, "everyone but itself");
    assert!(node.members().all(|m| m.state == MemberState::Alive));
    assert!(node.members().all(|m| m.meta.is_some()), "with metadata");
    assert_eq!(node.poll_event(), None, "no join events");
    let mut probed = BTreeSet::new();
    let mut now = 0;
    while now < 10_000 {
        now = node.poll_timeout().expect("timers run").max(now);
        node.handle_timeout(now);
        while let Some((to, body)) = node.poll_transmit() {
            if let Body::Ping(ping) = body {
                probed.insert(to.clone());
                node.handle_ack(
                    now,
                    &to,
                    &Ack {
                        seq: ping.seq,
                        updates: Vec::new(),
                    },
                );
            }
        }
    }
    assert!(
        (9..=11).contains(&probed.len()),
        "one distinct member a second: {probed:?}"
    );
}

#[test]
fn a_suspicion_is_pushed_to_three_members_within_a_gossip_round() {
    let mut node = membership("me", meta("amd64"), 4);
    node.assume_known(0, &announcements(20));
    // Nothing answers: the first probe fails, its target is suspected.
    let mut now = 0;
    let mut suspected = None;
    let mut pushed: Vec<(u64, String)> = Vec::new();
    while now < 3_000 {
        now = node.poll_timeout().expect("timers run").max(now);
        node.handle_timeout(now);
        while let Some(event) = node.poll_event() {
            if let MembershipEvent::Suspected(id) = event {
                suspected.get_or_insert((now, id));
            }
        }
        while let Some((to, body)) = node.poll_transmit() {
            if let (Body::Sync(sync), Some((_, target))) = (&body, &suspected)
                && !sync.reply
                && sync
                    .updates
                    .iter()
                    .any(|u| u.node == *target && u.state == MemberState::Suspect)
            {
                pushed.push((now, to));
            }
        }
    }
    let (at, target) = suspected.expect("an unanswered probe ends in suspicion");
    let first_round: BTreeSet<&String> = pushed
        .iter()
        .filter(|(t, _)| *t < at + 200)
        .map(|(_, to)| to)
        .collect();
    assert_eq!(
        first_round.len(),
        3,
        "pushed to {first_round:?} within 200 ms of suspecting {target} at {at}"
    );
    assert!(!first_round.contains(&target));
}

#[test]
fn push_pull_exchanges_thin_out_as_the_cluster_grows() {
    let exchanges = |members: usize| {
        let mut node = membership("me", meta("amd64"), 6);
        node.assume_known(0, &announcements(members));
        run_alone(&mut node, 0, 600_000)
            .iter()
            .filter(|(_, _, body)| matches!(body, Body::Sync(s) if s.reply))
            .count()
    };
    // 30 s up to 32 members: 20 in ten minutes.
    let small = exchanges(8);
    assert!(
        (19..=21).contains(&small),
        "{small} exchanges with 9 members"
    );
    // 65 members: log2(65) − log2(32) rounds up to 2, so every 90 s: 6 or 7.
    let large = exchanges(64);
    assert!(
        (6..=7).contains(&large),
        "{large} exchanges with 65 members"
    );
}

#[test]
fn the_dead_are_forgotten_after_the_retention_time() {
    let mut net = Net::new(4);
    net.run(5_000);
    net.down[3] = true;
    let crashed_at = net.now;
    net.run(crashed_at + 30_000);
    assert_eq!(net.state(0, 3), Some(MemberState::Dead));
    // Retention is 300 s from the death.
    net.run(crashed_at + 330_000);
    for observer in 0..3 {
        assert_eq!(net.state(observer, 3), None, "n{observer} still holds n3");
        assert_eq!(net.nodes[observer].member_count(), 2);
    }
}

#[test]
fn paced_metadata_goes_out_at_most_once_per_members_over_the_cluster_rate() {
    let mut node = membership("me", meta("amd64"), 8);
    node.assume_known(0, &announcements(99));
    let with_cpu = |cpu: u64| {
        let mut m = meta("amd64");
        m.free.cpu_millis = cpu;
        m
    };
    let announced_cpu = |node: &Membership| node.announcement().meta.unwrap().free.cpu_millis;
    // A converged start draws each node's first turn within the interval.
    node.set_meta_paced(20_000, with_cpu(900));
    assert_eq!(announced_cpu(&node), 900, "its turn had come: at once");
    node.set_meta_paced(21_000, with_cpu(800));
    node.set_meta_paced(22_000, with_cpu(700));
    assert_eq!(announced_cpu(&node), 900, "later ones wait their turn");
    // 100 members at 8 announcements a second for the cluster: one per 12.5 s each.
    let due = node.poll_timeout().unwrap();
    assert!(
        due <= 20_000 + 12_500,
        "a timer for the pending announcement: {due}"
    );
    node.handle_timeout(20_000 + 12_499);
    assert_eq!(announced_cpu(&node), 900);
    node.handle_timeout(20_000 + 12_500);
    assert_eq!(
        announced_cpu(&node),
        700,
        "the latest value, when its turn came"
    );
    // An immediate announcement supersedes a pending paced one.
    node.set_meta_paced(34_000, with_cpu(600));
    node.set_meta(with_cpu(500));
    node.handle_timeout(60_000);
    assert_eq!(announced_cpu(&node), 500);
}

/// Class 4 of the zero-trust issue: gossip about a third party was accepted at any
/// incarnation. `Dead @ u64::MAX` killed a live node for good (its refutation wrapped),
/// and `Alive @ u64::MAX` with forged metadata rewrote its address and capacity; after a
/// first fix, `Alive` a step above the incarnation held still did.
#[test]
fn a_third_party_cannot_kill_a_member_or_rewrite_its_metadata() {
    let mut net = Net::new(3);
    net.run(5_000);
    let victim = "n1";
    let held = net.nodes[0].member(victim).unwrap().incarnation;
    let forged_meta = NodeMeta {
        address: Some("203.0.113.66:7946".to_owned()),
        ..meta("evil")
    };
    let forge = |state, incarnation, meta: Option<&NodeMeta>| MemberUpdate {
        node: victim.to_owned(),
        state,
        incarnation,
        meta: meta.cloned().map(Arc::new),
        statement: None,
    };
    // A statement about n1 that n2 signed: n2's key does not speak for n1.
    let signed_by_n2 = MemberUpdate {
        statement: Some(Arc::new(signed("n2", victim, held + 1, &forged_meta))),
        ..forge(MemberState::Alive, held + 1, None)
    };
    // n2 turns hostile and tells n0 lies about n1.
    let lies = [
        forge(MemberState::Dead, u64::MAX, None),
        forge(MemberState::Suspect, held + 1, None),
        forge(MemberState::Alive, u64::MAX, Some(&forged_meta)),
        // One step up: an incarnation n1 could have reached, but not n1's word.
        forge(MemberState::Alive, held + 1, Some(&forged_meta)),
        // Same incarnation, other metadata: not a new statement by n1.
        forge(MemberState::Alive, held, Some(&forged_meta)),
        signed_by_n2,
    ];
    for lie in lies {
        net.nodes[0].handle_sync(net.now, "n2", &sync_of(vec![lie]));
    }
    let seen = net.nodes[0].member(victim).unwrap();
    assert_eq!(seen.state, MemberState::Alive, "{seen:?}");
    assert_eq!(seen.incarnation, held, "{seen:?}");
    assert_eq!(seen.meta.as_deref().map(|m| m.arch.as_str()), Some("arm64"));
    assert!(net.nodes[0].refused_statements() >= 1);

    // The member itself speaks for itself, and a lie about it told to it is refuted
    // above the lie, without wrapping.
    let own = forge(MemberState::Alive, held + 5, Some(&meta("arm64")));
    net.nodes[0].handle_sync(net.now, victim, &sync_of(vec![own]));
    assert_eq!(net.nodes[0].member(victim).unwrap().incarnation, held + 5);
    let lie = forge(MemberState::Dead, u64::MAX, None);
    net.nodes[1].handle_sync(net.now, "n2", &sync_of(vec![lie]));
    net.run(net.now + 3_000);
    let seen = net.nodes[0].member(victim).unwrap();
    assert_eq!(seen.state, MemberState::Alive, "{seen:?}");
    assert!(seen.incarnation < u64::MAX / 2, "{seen:?}");
}

/// A relayed statement speaks for its signer and for the incarnation it names: n1's own
/// statement, relayed, moves n1 on; the same statement replayed under a higher
/// incarnation does not.
#[test]
fn a_relayed_statement_speaks_only_for_its_signer_and_incarnation() {
    let mut net = Net::new(3);
    net.run(5_000);
    let held = net.nodes[0].member("n1").unwrap().incarnation;
    let genuine = signed("n1", "n1", held + 1, &meta("riscv64"));
    let relay = |incarnation| MemberUpdate {
        node: "n1".to_owned(),
        state: MemberState::Alive,
        incarnation,
        meta: None,
        statement: Some(Arc::new(genuine.clone())),
    };
    net.nodes[0].handle_sync(net.now, "n2", &sync_of(vec![relay(held + 2)]));
    assert_eq!(net.nodes[0].member("n1").unwrap().incarnation, held);
    net.nodes[0].handle_sync(net.now, "n2", &sync_of(vec![relay(held + 1)]));
    let seen = net.nodes[0].member("n1").unwrap();
    assert_eq!(seen.incarnation, held + 1, "{seen:?}");
    assert_eq!(
        seen.meta.as_deref().map(|m| m.arch.as_str()),
        Some("riscv64")
    );
}

/// Class 6 of the zero-trust issue: one `Sync` frame introduced hundreds of invented
/// members, which were then gossiped, asked for bids and dialled. Now a member is learned
/// only from itself or its own signed statement.
#[test]
fn nobody_can_introduce_members_that_do_not_exist() {
    let mut net = Net::new(3);
    net.run(5_000);
    let before = net.nodes[0].member_count();
    let hostile = NodeMeta {
        address: Some("203.0.113.67:7946".to_owned()),
        ..meta("amd64")
    };
    let invented: Vec<MemberUpdate> = (0..500)
        .map(|i| {
            let node = format!("fake{i}");
            MemberUpdate {
                state: MemberState::Alive,
                incarnation: 1,
                meta: Some(Arc::new(hostile.clone())),
                // Half of them with a statement n2 signed for them.
                statement: (i % 2 == 0).then(|| Arc::new(signed("n2", &node, 1, &hostile))),
                node,
            }
        })
        .collect();
    for chunk in invented.chunks(100) {
        net.nodes[0].handle_sync(net.now, "n2", &sync_of(chunk.to_vec()));
    }
    assert_eq!(net.nodes[0].member_count(), before, "no invented member");
    // A real member n0 has not met yet, relayed with its own statement, is learned.
    let newcomer = signed("n9", "n9", 3, &meta("amd64"));
    let relayed = MemberUpdate {
        node: "n9".to_owned(),
        state: MemberState::Alive,
        incarnation: 3,
        meta: None,
        statement: Some(Arc::new(newcomer)),
    };
    net.nodes[0].handle_sync(net.now, "n2", &sync_of(vec![relayed]));
    assert_eq!(net.nodes[0].member_count(), before + 1);
    assert!(net.nodes[0].member("n9").unwrap().meta.is_some());
}

/// However many genuine statements arrive, the table stops at `max_members`.
#[test]
fn the_member_table_is_capped() {
    let config = MembershipConfig {
        max_members: 10,
        ..MembershipConfig::default()
    };
    let mut node = Membership::new(
        "me",
        meta("amd64"),
        config,
        0,
        1,
        Box::new(ChecksumNotary::new("me", NOTARY_SEED)),
    );
    let updates = (0..50)
        .map(|i| {
            let id = format!("m{i}");
            MemberUpdate {
                statement: Some(Arc::new(signed(&id, &id, 0, &meta("amd64")))),
                node: id,
                state: MemberState::Alive,
                incarnation: 0,
                meta: None,
            }
        })
        .collect();
    node.handle_sync(0, "m0", &sync_of(updates));
    assert_eq!(node.member_count(), 10);
}

/// `node`'s statement that `about` is alive at `incarnation` with `meta`, signed with
/// `signer`'s key.
fn signed(signer: &str, about: &str, incarnation: u64, meta: &NodeMeta) -> SignedStatement {
    let statement = Statement {
        node: about.to_owned(),
        incarnation,
        meta: meta.clone(),
    };
    ChecksumNotary::new(signer, NOTARY_SEED).sign(StatementKind::Member, statement.encode())
}

fn sync_of(updates: Vec<MemberUpdate>) -> Sync {
    Sync {
        updates,
        reply: false,
    }
}

/// A join's exchange with a seed that is lost is tried again, even once other members
/// are known: otherwise two groups whose joins across were all lost never meet (found by
/// the simulator, seeds 1399 and 7269). Seeds given one at a time all count.
#[test]
fn a_seed_never_heard_from_is_tried_again() {
    let mut node = membership("a", meta("amd64"), 1);
    node.join(&["s1".to_owned()]);
    node.join(&["s2".to_owned()]);
    // Both exchanges are lost; s2 is then heard from, s1 never.
    while node.poll_transmit().is_some() {}
    let s2 = membership("s2", meta("amd64"), 2).announcement();
    node.handle_sync(10, "s2", &sync_of(vec![s2]));
    let sent = run_alone(&mut node, 10, 25_000);
    let retried = sent
        .iter()
        .filter(|(_, to, body)| to == "s1" && matches!(body, Body::Sync(s) if s.reply))
        .count();
    assert!(retried >= 1, "s1 was never asked again: {sent:?}");
}
