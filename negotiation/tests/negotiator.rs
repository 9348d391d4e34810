//! The negotiator driven by hand: two nodes, messages passed directly, the host played by
//! the test. What the agent relies on: an Accept never leaves before its award is
//! stored, a failed store withholds it, a node talks to itself without the network, the
//! gate refuses before any state machine sees a message, and questions are answered even
//! when peers stay silent.

use std::collections::{BTreeMap, VecDeque};

use parley_negotiation::auction::PlacementRequest;
use parley_negotiation::membership::{Notary, StatementKind};
use parley_negotiation::messages::{
    Award, Body, Grant, NodeMeta, Resources, Revoke, SignedStatement, WorkloadRecord,
};
use parley_negotiation::negotiator::{
    Action, AllowAll, Authorizer, Denial, Event, HostAction, HostError, LOGS_TIMEOUT_MS,
    Negotiator, NegotiatorConfig, QUERY_TIMEOUT_MS, Reply, Request,
};
use parley_negotiation::testing::ChecksumNotary;
use parley_negotiation::workload::{WorkloadName, WorkloadSpec};

const A: &str = "spiffe://td/node/a";
const B: &str = "spiffe://td/node/b";
const GIB: u64 = 1 << 30;

fn meta(cpu_millis: u64) -> NodeMeta {
    let allocatable = Resources {
        cpu_millis,
        memory_bytes: 8 * GIB,
    };
    NodeMeta {
        protocol_min: parley_negotiation::codec::MIN_PROTOCOL_VERSION,
        protocol_max: parley_negotiation::codec::PROTOCOL_VERSION,
        arch: "amd64".to_owned(),
        allocatable,
        free: allocatable,
        ..NodeMeta::default()
    }
}

fn node(id: &str, cpu_millis: u64, authorizer: Box<dyn Authorizer>) -> Negotiator {
    Negotiator::new(
        id,
        NegotiatorConfig::default(),
        meta(cpu_millis),
        Vec::new(),
        0,
        7,
        authorizer,
        Box::new(ChecksumNotary::new(id, 0xC0DE)),
    )
}

fn web(replicas: u32, cpu_millis: u64) -> PlacementRequest {
    let mut spec =
        WorkloadSpec::new(WorkloadName::new("web").unwrap(), "img:1", vec![], vec![]).unwrap();
    spec.replicas = replicas;
    spec.resources = Resources {
        cpu_millis,
        memory_bytes: GIB,
    };
    PlacementRequest::for_spec("default/web", &spec)
}

/// Two nodes that know each other, and what each sent.
struct Pair {
    nodes: [Negotiator; 2],
    now: u64,
    /// Everything that crossed the "network", in order: (from, to, kind).
    wire: Vec<(usize, String, &'static str)>,
    /// Host actions not yet carried out, by node.
    actions: [VecDeque<HostAction>; 2],
}

impl Pair {
    fn new(b: Box<dyn Authorizer>) -> Self {
        Self::of([node(A, 4_000, Box::new(AllowAll)), node(B, 4_000, b)])
    }

    fn of(nodes: [Negotiator; 2]) -> Self {
        let mut pair = Self {
            nodes,
            now: 0,
            wire: Vec::new(),
            actions: [VecDeque::new(), VecDeque::new()],
        };
        pair.nodes[0].handle_seed(0, B);
        pair.run_until(3_000);
        pair
    }

    /// Moves messages and lets time pass until `until`, collecting host actions without
    /// carrying them out.
    fn run_until(&mut self, until: u64) {
        loop {
            let mut moved = false;
            for from in 0..2 {
                while let Some(action) = self.nodes[from].poll_action() {
                    self.actions[from].push_back(action);
                }
                while let Some((to, body)) = self.nodes[from].poll_transmit() {
                    moved = true;
                    self.wire.push((from, to.clone(), body.kind()));
                    let target = usize::from(to == B);
                    let sender = if from == 0 { A } else { B };
                    self.nodes[target].handle_message(self.now, sender, body);
                }
            }
            if moved {
                continue;
            }
            let next = self.nodes.iter().filter_map(Negotiator::poll_timeout).min();
            match next {
                Some(at) if at <= until => {
                    self.now = at.max(self.now);
                    for node in &mut self.nodes {
                        node.handle_timeout(self.now);
                    }
                }
                _ => break,
            }
        }
        self.now = until.max(self.now);
    }

    fn sent(&self, from: usize, kind: &str) -> usize {
        self.wire
            .iter()
            .filter(|(f, _, k)| *f == from && *k == kind)
            .count()
    }

    /// The first pending Commit of node `i`.
    fn take_commit(&mut self, i: usize) -> u64 {
        let at = self.actions[i]
            .iter()
            .position(|a| matches!(a, HostAction::Commit { .. }))
            .unwrap_or_else(|| panic!("no commit asked of node {i}: {:?}", self.actions[i]));
        match self.actions[i].remove(at) {
            Some(HostAction::Commit { token, assignment }) => {
                assert_eq!(assignment.spec.name.as_str(), "web");
                token
            }
            _ => unreachable!(),
        }
    }
}

/// Places one replica that only B can host (A has no room).
fn place_on_b(pair: &mut Pair) {
    pair.nodes[0] = node(A, 100, Box::new(AllowAll));
    pair.nodes[0].handle_seed(pair.now, B);
    pair.run_until(pair.now + 3_000);
    pair.nodes[0].handle_request(pair.now, 1, Request::Place(web(1, 1_000)));
    pair.run_until(pair.now + 1_000);
}

#[test]
fn an_accept_leaves_only_after_its_award_is_stored() {
    let mut pair = Pair::new(Box::new(AllowAll));
    place_on_b(&mut pair);
    // The owner resends its award while B stores it; B acknowledges none of them yet.
    assert!(pair.sent(0, "award") >= 2, "{:?}", pair.wire);
    assert_eq!(
        pair.sent(1, "accept"),
        0,
        "accepted before the award was stored"
    );
    let token = pair.take_commit(1);

    let now = pair.now;
    pair.nodes[1].handle_committed(now, token, Ok(()));
    pair.run_until(now + 100);
    assert_eq!(
        pair.sent(1, "accept"),
        1,
        "one Accept for all the repeated awards"
    );
    assert!(
        pair.actions[1].iter().any(
            |a| matches!(a, HostAction::Start { workload, replica: 0 } if workload == "default/web")
        ),
        "{:?}",
        pair.actions[1]
    );
    assert_eq!(
        pair.nodes[0].announcer().placements("default/web").get(&0),
        Some(&(B.to_owned(), 1))
    );
}

#[test]
fn an_award_that_cannot_be_stored_is_never_acknowledged_and_holds_nothing() {
    let mut pair = Pair::new(Box::new(AllowAll));
    place_on_b(&mut pair);
    let token = pair.take_commit(1);
    let now = pair.now;
    let full = HostError::Store("no space left on device".to_owned());
    pair.nodes[1].handle_committed(now, token, Err(full.clone()));
    let mut failed = false;
    while let Some(event) = pair.nodes[1].poll_event() {
        failed |= matches!(&event, Event::CommitFailed { error, .. } if *error == full);
    }
    assert!(failed, "the failure is reported");
    assert_eq!(pair.nodes[1].bidder().committed().count(), 0);
    // The owner's repeated award is rejected; it never hears an Accept for it.
    pair.run_until(now + 2_000);
    assert_eq!(pair.sent(1, "accept"), 0, "{:?}", pair.wire);
    assert!(pair.sent(1, "reject") >= 1, "{:?}", pair.wire);
}

#[test]
fn a_node_alone_places_on_itself_without_the_network() {
    let mut alone = node(A, 4_000, Box::new(AllowAll));
    alone.handle_request(0, 1, Request::Place(web(1, 500)));
    let mut now = 0;
    let mut token = None;
    while token.is_none() && now < 2_000 {
        assert_eq!(
            alone.poll_transmit(),
            None,
            "a message to itself left the node"
        );
        while let Some(action) = alone.poll_action() {
            if let HostAction::Commit { token: t, .. } = action {
                token = Some(t);
            }
        }
        now = alone.poll_timeout().unwrap_or(now + 100).max(now);
        alone.handle_timeout(now);
    }
    let token = token.expect("the node awarded itself the replica");
    alone.handle_committed(now, token, Ok(()));
    assert_eq!(alone.poll_transmit(), None);
    assert_eq!(
        alone.announcer().placements("default/web").get(&0),
        Some(&(A.to_owned(), 1))
    );
}

/// Refuses A as an owner: it may not submit.
struct ASubmitsNothing;

impl Authorizer for ASubmitsNothing {
    fn check(&self, peer: &str, action: Action, namespace: &str) -> Result<(), Denial> {
        if peer == A && action == Action::Submit {
            return Err(Denial {
                action,
                reason: format!("{peer} may not submit in {namespace}"),
            });
        }
        Ok(())
    }
}

#[test]
fn a_call_from_an_owner_that_may_not_submit_is_declined_before_the_bidder_sees_it() {
    let mut pair = Pair::new(Box::new(ASubmitsNothing));
    place_on_b(&mut pair);
    assert_eq!(pair.sent(1, "bid"), 0, "{:?}", pair.wire);
    assert!(pair.sent(1, "decline") >= 1);
    assert_eq!(pair.nodes[1].bidder().reservations().count(), 0);
    let mut denied = 0;
    while let Some(event) = pair.nodes[1].poll_event() {
        denied += usize::from(matches!(
            event,
            Event::Denied {
                action: Action::Submit,
                ..
            }
        ));
    }
    assert!(denied >= 1);
    let explanation = pair.nodes[0].announcer().explain("default/web");
    assert!(
        format!("{explanation:?}").contains("PolicyDenied"),
        "{explanation:?}"
    );
}

#[test]
fn questions_are_answered_by_their_deadline_even_when_peers_stay_silent() {
    let mut pair = Pair::new(Box::new(AllowAll));
    // A asks; B's answers are never delivered.
    let now = pair.now;
    pair.nodes[0].handle_request(now, 10, Request::ListMesh);
    pair.nodes[0].handle_request(
        now,
        11,
        Request::Logs {
            node: B.to_owned(),
            workload: "default/web".to_owned(),
            replica: 0,
            window: Default::default(),
        },
    );
    while pair.nodes[0].poll_transmit().is_some() {}
    let mut answers = BTreeMap::new();
    let mut at = now;
    while answers.len() < 2 && at <= now + LOGS_TIMEOUT_MS {
        at = pair.nodes[0].poll_timeout().expect("a deadline is pending");
        pair.nodes[0].handle_timeout(at);
        while pair.nodes[0].poll_transmit().is_some() {}
        while let Some(action) = pair.nodes[0].poll_action() {
            if let HostAction::Answer { token, reply } = action {
                answers.insert(token, (at - now, reply));
            }
        }
    }
    let (list_after, list) = &answers[&10];
    assert!(*list_after <= QUERY_TIMEOUT_MS);
    assert!(matches!(list, Reply::ListMesh(owned) if owned.is_empty()));
    let (logs_after, logs) = &answers[&11];
    assert!(*logs_after <= LOGS_TIMEOUT_MS);
    assert!(
        matches!(logs, Reply::Logs(Err(failure)) if !failure.denied && failure.message.contains("no answer")),
        "{logs:?}"
    );
}

#[test]
fn a_replica_revoked_while_its_award_is_stored_never_starts_nor_reports() {
    let mut pair = Pair::new(Box::new(AllowAll));
    place_on_b(&mut pair);
    let token = pair.take_commit(1);
    // Reports fall due while B stores the award: none may name it (the owner would
    // take it for the Accept).
    let now = pair.now;
    pair.run_until(now + 3_000);
    assert_eq!(pair.sent(1, "instance"), 0, "{:?}", pair.wire);
    // The owner revokes the replica (a newer placement stands) before the store is done.
    let now = pair.now;
    pair.nodes[1].handle_message(
        now,
        A,
        Body::Revoke(Revoke {
            workload: "default/web".to_owned(),
            replica: 0,
            epoch: 1,
        }),
    );
    pair.nodes[1].handle_committed(now, token, Ok(()));
    pair.run_until(now + 100);
    assert_eq!(pair.sent(1, "accept"), 0, "{:?}", pair.wire);
    let actions: Vec<&HostAction> = pair.actions[1].iter().collect();
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, HostAction::Start { .. })),
        "{actions:?}"
    );
    assert!(
        actions
            .iter()
            .filter(|a| matches!(a, HostAction::Revoke { replica: 0, .. }))
            .count()
            >= 1,
        "the record written meanwhile is revoked too: {actions:?}"
    );
}

/// A call for proposals straight from A for replica 0 of `web` (auction 99, epoch 1),
/// one CPU and 1 GiB.
fn cfp_for_web(now: u64) -> Body {
    Body::Cfp(parley_negotiation::messages::Cfp {
        auction: 99,
        workload: "default/web".to_owned(),
        replica: 0,
        epoch: 1,
        image: "img:1".to_owned(),
        resources: Resources {
            cpu_millis: 1_000,
            memory_bytes: GIB,
        },
        constraints: BTreeMap::new(),
        arch: None,
        spread_label: None,
        scoring: Default::default(),
        bid_deadline_ms: now + 1_000,
    })
}

/// An award for `web` answering B's bid, with `spec` instead of web's own.
fn award_with(pair: &mut Pair, spec: WorkloadSpec) -> Vec<(String, Body)> {
    award_granted(pair, spec, None)
}

/// An award for `web` answering B's bid, with `spec` and `grant`.
fn award_granted(
    pair: &mut Pair,
    spec: WorkloadSpec,
    grant: Option<SignedStatement>,
) -> Vec<(String, Body)> {
    let reservation = pair.nodes[1]
        .bidder()
        .reservations()
        .next()
        .expect("B holds a reservation for its bid")
        .id
        .clone();
    let now = pair.now;
    pair.nodes[1].handle_message(
        now,
        A,
        Body::Award(Award {
            auction: 99,
            workload: "default/web".to_owned(),
            replica: 0,
            epoch: 1,
            reservation,
            spec: Some(spec),
            submitter: None,
            grant,
        }),
    );
    std::iter::from_fn(|| pair.nodes[1].poll_transmit()).collect()
}

#[test]
fn an_award_whose_spec_is_another_workload_or_asks_more_than_the_bid_is_rejected() {
    let mut pair = Pair::new(Box::new(AllowAll));
    let now = pair.now;
    // A call for proposals straight from A: B bids and holds a reservation.
    pair.nodes[1].handle_message(now, A, cfp_for_web(now));
    while pair.nodes[1].poll_transmit().is_some() {}

    let spec = |name: &str, cpu_millis: u64| {
        let mut spec =
            WorkloadSpec::new(WorkloadName::new(name).unwrap(), "img:1", vec![], vec![]).unwrap();
        spec.resources = Resources {
            cpu_millis,
            memory_bytes: GIB,
        };
        spec
    };
    for (bad, why) in [
        (spec("other", 1_000), "not default/web"),
        (spec("web", 4_000), "reserved"),
    ] {
        let sent = award_with(&mut pair, bad);
        assert!(
            matches!(sent.as_slice(), [(to, Body::Reject(r))] if to == A && r.reason.contains(why)),
            "{sent:?}"
        );
        assert_eq!(pair.nodes[1].bidder().committed().count(), 0);
        assert!(
            !std::iter::from_fn(|| pair.nodes[1].poll_action())
                .any(|a| matches!(a, HostAction::Commit { .. })),
            "nothing is stored"
        );
    }
    // The honest award still goes through.
    let sent = award_with(&mut pair, spec("web", 1_000));
    assert!(sent.is_empty(), "held until stored: {sent:?}");
    assert_eq!(pair.nodes[1].bidder().committed().count(), 1);
}

/// Zero-trust class 11: an owner signs a grant of each replica it awards, which the
/// winner keeps with the assignment (its workload identities carry it); an award whose
/// grant is of another replica, for another node, or not signed by its sender is
/// rejected.
#[test]
fn each_award_carries_its_owners_grant_and_a_forged_grant_is_rejected() {
    let mut pair = Pair::new(Box::new(AllowAll));
    place_on_b(&mut pair);
    let at = pair.actions[1]
        .iter()
        .position(|a| matches!(a, HostAction::Commit { .. }))
        .expect("B stores the award");
    let Some(HostAction::Commit { assignment, .. }) = pair.actions[1].remove(at) else {
        unreachable!()
    };
    let signed = assignment.grant.expect("the award carried a grant");
    let grant = Grant::decode(&signed.statement).expect("a grant");
    assert_eq!(
        (
            grant.owner.as_str(),
            grant.node.as_str(),
            grant.workload.as_str()
        ),
        (A, B, "default/web")
    );
    assert_eq!((grant.replica, grant.epoch), (0, assignment.epoch));
    assert!(ChecksumNotary::new(B, 0xC0DE).verify(StatementKind::Grant, A, &signed, 0));

    let mut pair = Pair::new(Box::new(AllowAll));
    let now = pair.now;
    pair.nodes[1].handle_message(now, A, cfp_for_web(now));
    while pair.nodes[1].poll_transmit().is_some() {}
    let spec = || {
        let mut spec =
            WorkloadSpec::new(WorkloadName::new("web").unwrap(), "img:1", vec![], vec![]).unwrap();
        spec.resources = Resources {
            cpu_millis: 1_000,
            memory_bytes: GIB,
        };
        spec
    };
    let grant = |signer: &str, node: &str, replica: u32| {
        let grant = Grant {
            owner: A.to_owned(),
            node: node.to_owned(),
            workload: "default/web".to_owned(),
            replica,
            epoch: 1,
            granted_at_ms: now,
        };
        ChecksumNotary::new(signer, 0xC0DE).sign(StatementKind::Grant, grant.encode())
    };
    for (forged, why) in [
        (grant(C, B, 0), "not signed by its sender"),
        (grant(A, C, 0), "not of this replica"),
        (grant(A, B, 1), "not of this replica"),
    ] {
        let sent = award_granted(&mut pair, spec(), Some(forged));
        assert!(
            matches!(sent.as_slice(), [(to, Body::Reject(r))] if to == A && r.reason.contains(why)),
            "{why}: {sent:?}"
        );
        assert_eq!(pair.nodes[1].bidder().committed().count(), 0);
    }
    let sent = award_granted(&mut pair, spec(), Some(grant(A, B, 0)));
    assert!(sent.is_empty(), "held until stored: {sent:?}");
    assert_eq!(pair.nodes[1].bidder().committed().count(), 1);
}

const C: &str = "spiffe://td/node/c";

/// C may be a member, but may neither host nor own anything.
struct CHostsNothing;

impl Authorizer for CHostsNothing {
    fn check(&self, peer: &str, action: Action, namespace: &str) -> Result<(), Denial> {
        if peer == C && action != Action::Member {
            return Err(Denial {
                action,
                reason: format!("{peer} may not {action} in {namespace}"),
            });
        }
        Ok(())
    }
}

fn denials(node: &mut Negotiator) -> Vec<Action> {
    let mut denied = Vec::new();
    while let Some(event) = node.poll_event() {
        if let Event::Denied { action, .. } = event {
            denied.push(action);
        }
    }
    denied
}

#[test]
fn a_report_from_a_node_that_may_not_host_the_namespace_is_refused() {
    let mut a = node(A, 4_000, Box::new(CHostsNothing));
    a.handle_request(0, 1, Request::Place(web(1, 1_000)));
    let mut now = 0;
    while now < 5_000 {
        while let Some(action) = a.poll_action() {
            if let HostAction::Commit { token, .. } = action {
                a.handle_committed(now, token, Ok(()));
            }
        }
        now = a.poll_timeout().unwrap_or(5_000).max(now + 1);
        a.handle_timeout(now);
    }
    assert_eq!(
        a.announcer()
            .placements("default/web")
            .get(&0)
            .map(|p| p.0.as_str()),
        Some(A)
    );
    denials(&mut a);
    // A phantom instance from a node that may not host: before every message kind went
    // through the gate, A answered it with a revocation.
    a.handle_message(
        now,
        C,
        Body::Instance(parley_negotiation::messages::Instance {
            workload: "default/web".to_owned(),
            replica: 0,
            epoch: 99,
            reservation: "r".to_owned(),
            failure_domain: None,
            grant: None,
            state: None,
            spec_digest: None,
        }),
    );
    let mut sent = Vec::new();
    while let Some(transmit) = a.poll_transmit() {
        sent.push(transmit);
    }
    assert!(sent.is_empty(), "A acted on C's report: {sent:?}");
    assert_eq!(denials(&mut a), [Action::Bid]);
    assert_eq!(
        a.announcer()
            .placements("default/web")
            .get(&0)
            .map(|p| p.0.as_str()),
        Some(A),
        "the replica's placement moved"
    );
}

/// B learns from A that `member` existed and died.
fn learn_dead(b: &mut Negotiator, member: &str) {
    for state in [
        parley_negotiation::messages::MemberState::Alive,
        parley_negotiation::messages::MemberState::Dead,
    ] {
        b.handle_message(
            5,
            A,
            Body::Sync(parley_negotiation::messages::Sync {
                updates: vec![parley_negotiation::messages::MemberUpdate {
                    node: member.to_owned(),
                    state,
                    incarnation: 0,
                    meta: None,
                    // A relays the member's own statement: B learns of no member otherwise.
                    statement: Some(std::sync::Arc::new(
                        ChecksumNotary::new(member, 0xC0DE).sign(
                            StatementKind::Member,
                            parley_negotiation::messages::Statement {
                                node: member.to_owned(),
                                incarnation: 0,
                                meta: meta(1_000),
                            }
                            .encode(),
                        ),
                    )),
                }],
                reply: false,
            }),
        );
    }
    while b.poll_event().is_some() {}
    assert_eq!(
        b.membership().member(member).map(|m| m.state),
        Some(parley_negotiation::messages::MemberState::Dead)
    );
}

/// A hand-over of `default/web` from A naming `submitter` is refused by B: a denial of
/// `submit`, and B never takes the workload over.
fn assert_handover_refused(b: &mut Negotiator, submitter: &str) {
    let spec = web(1, 1_000).spec.expect("a spec");
    b.handle_message(
        10,
        A,
        Body::Handover(parley_negotiation::messages::Handover {
            workload: "default/web".to_owned(),
            submitter: submitter.to_owned(),
            spec,
        }),
    );
    assert_eq!(denials(b), [Action::Submit]);
    b.handle_timeout(60_000);
    while let Some(action) = b.poll_action() {
        assert!(
            !matches!(action, HostAction::Adopt { .. }),
            "B took over a workload {submitter} could not hand it: {action:?}"
        );
    }
}

#[test]
fn a_handover_naming_a_submitter_nobody_knows_as_gone_is_refused() {
    let mut b = node(B, 4_000, Box::new(AllowAll));
    assert_handover_refused(&mut b, "spiffe://td/node/made-up");
}

#[test]
fn a_handover_naming_a_submitter_that_may_not_submit_is_refused() {
    let mut b = node(B, 4_000, Box::new(CHostsNothing));
    learn_dead(&mut b, C);
    assert_handover_refused(&mut b, C);
}

/// Class 7 of the zero-trust issue: the namespace authorized was the key's, but the node
/// stored and ran the replica by its bare name in `default`, so a node allowed only in
/// `sandbox` could overwrite `default/web`. A namespace the node does not host is now
/// refused at the gate.
#[test]
fn a_workload_of_a_namespace_this_node_does_not_host_is_refused_where_it_arrives() {
    let mut b = node(B, 4_000, Box::new(AllowAll));
    let request = web(1, 1_000);
    let spec = request.spec.clone().expect("a spec");
    b.handle_message(
        10,
        A,
        Body::Cfp(parley_negotiation::messages::Cfp {
            auction: 1,
            workload: "sandbox/web".to_owned(),
            replica: 0,
            epoch: 1,
            image: "img:1".to_owned(),
            resources: spec.resources,
            constraints: BTreeMap::new(),
            arch: None,
            spread_label: None,
            scoring: parley_negotiation::messages::Scoring::Spread,
            bid_deadline_ms: 1_000,
        }),
    );
    b.handle_message(
        20,
        A,
        Body::Award(Award {
            auction: 1,
            workload: "sandbox/web".to_owned(),
            replica: 0,
            epoch: 1,
            reservation: "forged".to_owned(),
            spec: Some(spec.clone()),
            submitter: None,
            grant: None,
        }),
    );
    let sent: Vec<_> = std::iter::from_fn(|| b.poll_transmit()).collect();
    assert!(
        matches!(sent.as_slice(), [(_, Body::Decline(_)), (_, Body::Reject(reject))]
            if reject.reason.contains("not \"sandbox\"")),
        "{sent:?}"
    );
    assert_eq!(b.bidder().reservations().count(), 0);
    assert_eq!(b.bidder().committed().count(), 0);
    while let Some(action) = b.poll_action() {
        assert!(!matches!(action, HostAction::Commit { .. }), "{action:?}");
    }
}

/// A report with no grant (from a node of an older version, whose stored awards have
/// none) is taken where it confirms the placement on record, so that a running mesh can
/// be upgraded; anywhere else it is refused, without stopping the replica.
#[test]
fn a_report_without_a_grant_only_confirms_what_is_on_record() {
    let mut pair = Pair::new(Box::new(AllowAll));
    place_on_b(&mut pair);
    let token = pair.take_commit(1);
    let now = pair.now;
    pair.nodes[1].handle_committed(now, token, Ok(()));
    pair.run_until(now + 500);
    let (node, epoch) = pair.nodes[0].announcer().placements("default/web")[&0].clone();
    assert_eq!(node, B);
    while pair.nodes[0].poll_event().is_some() {}
    let report = |epoch: u64| {
        Body::Instance(parley_negotiation::messages::Instance {
            workload: "default/web".to_owned(),
            replica: 0,
            epoch,
            reservation: "older".to_owned(),
            failure_domain: None,
            grant: None,
            state: None,
            spec_digest: None,
        })
    };
    let now = pair.now;
    pair.nodes[0].handle_message(now, B, report(epoch));
    let refused = |a: &mut Negotiator| {
        std::iter::from_fn(|| a.poll_event())
            .filter(|e| matches!(e, Event::InstanceRefused { .. }))
            .count()
    };
    assert_eq!(refused(&mut pair.nodes[0]), 0, "the placement on record");
    pair.nodes[0].handle_message(now, B, report(epoch + 7));
    assert_eq!(refused(&mut pair.nodes[0]), 1, "another epoch");
    let sent: Vec<_> = std::iter::from_fn(|| pair.nodes[0].poll_transmit()).collect();
    assert!(
        !sent.iter().any(|(_, b)| matches!(b, Body::Revoke(_))),
        "nothing shows the replica is not the owner's: it is not stopped: {sent:?}"
    );
    assert_eq!(
        pair.nodes[0].announcer().placements("default/web")[&0],
        (B.to_owned(), epoch)
    );
}

/// A node that keeps lease registers (`keeps`) or, like an older version, does not say so.
fn strong_node(id: &str, keeps: bool) -> Negotiator {
    let config = NegotiatorConfig {
        strong: keeps,
        ..NegotiatorConfig::default()
    };
    let meta = NodeMeta {
        lease_registers: keeps,
        ..meta(4_000)
    };
    Negotiator::new(
        id,
        config,
        meta,
        Vec::new(),
        0,
        7,
        Box::new(AllowAll),
        Box::new(ChecksumNotary::new(id, 0xC0DE)),
    )
}

/// A strong workload's acceptors are chosen among the members that keep lease
/// registers: one that does not say it does (an older version, which would refuse every
/// register message) is never named, however its hash ranks.
#[test]
fn acceptors_are_only_members_that_keep_lease_registers() {
    for b_keeps in [false, true] {
        let mut pair = Pair::of([strong_node(A, true), strong_node(B, b_keeps)]);
        let mut spec =
            WorkloadSpec::new(WorkloadName::new("db").unwrap(), "img:1", vec![], vec![]).unwrap();
        spec.consistency = parley_negotiation::Consistency::Strong;
        pair.nodes[0].handle_request(
            pair.now,
            1,
            Request::Place(PlacementRequest::for_spec("default/db", &spec)),
        );
        pair.run_until(pair.now + 100);
        let record = pair.actions[0]
            .iter()
            .find_map(|action| match action {
                HostAction::StoreRecord { record, .. } => Some(record.clone()),
                _ => None,
            })
            .expect("the owner stores the workload's record");
        let mut acceptors = WorkloadRecord::decode(&record.statement)
            .expect("a record")
            .acceptors;
        acceptors.sort();
        let expected: Vec<String> = if b_keeps {
            vec![A.to_owned(), B.to_owned()]
        } else {
            vec![A.to_owned()]
        };
        assert_eq!(acceptors, expected, "b keeps lease registers: {b_keeps}");
    }
}
