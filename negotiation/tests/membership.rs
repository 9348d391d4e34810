//! SWIM membership driven over a perfect in-memory network: joining through a seed,
//! metadata spread, failure detection, and refutation of a false suspicion.

use std::collections::VecDeque;

use parley_negotiation::membership::{Membership, MembershipConfig, MembershipEvent};
use parley_negotiation::messages::{Body, MemberState, NodeMeta, Resources};

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
                Membership::new(
                    format!("n{i}"),
                    meta(if i == 1 { "arm64" } else { "amd64" }),
                    MembershipConfig::default(),
                    0,
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
