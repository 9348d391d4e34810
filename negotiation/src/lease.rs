//! The leases a node holds, or seeks, for the replicas of strong workloads it was awarded.
//!
//! For each such replica a [`Claim`] runs register rounds ([`crate::register`]): it
//! acquires the lease (a new epoch), renews it every [`RENEW_INTERVAL_MS`], and tells the
//! host to run the container only while the lease is valid by this node's own clock. When
//! renewals fail it tells the host to stop the container early enough that it has stopped
//! when the lease ends: the stop timeout plus [`FENCE_SLACK_MS`] before. A claim then
//! seeks the lease again, at a new epoch, so the application sees every restart fenced.

use std::collections::{BTreeMap, VecDeque};

use crate::register::{
    AcceptorSet, Change, MAX_COUNTER, Outcome, RENEW_INTERVAL_MS, ROUND_TIMEOUT_MS,
    RegisterMessage, RegisterStep, Round, holder_valid_until, lease_ms,
};

/// Most times in a row a claim follows the register to another set of acceptors at once;
/// past that it waits as after a refusal (two sets that point at each other, which only
/// a change left half done can show, and only for a while).
const MAX_HOPS: u8 = 4;

/// Time a host gets, beyond the container's stop timeout, to begin stopping it.
pub const FENCE_SLACK_MS: u64 = 1_000;

/// Longest wait before a refused or timed-out round is tried again (the wait is spread
/// over this, so that two proposers do not collide again and again).
pub const RETRY_SPREAD_MS: u64 = 300;

/// Longest wait, past the end of another holder's lease, before a claimant that waited
/// for it tries again. Everyone who waited learned the end from the same accepts, so a
/// short spread keeps them apart; this wait is part of every failover, so it is short
/// (a collision costs a refusal and a [`RETRY_SPREAD_MS`] retry).
pub const HELD_RETRY_SPREAD_MS: u64 = 50;

/// What the host must do, or may want to log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LeaseEvent {
    /// The lease is held (acquired, or renewed): run the container, with this epoch as
    /// its fencing token, and have it stopped at `fence_at_ms` by this node's clock
    /// unless a later `Run` moves that on. A watchdog outside the agent's process can
    /// enforce the deadline even while the agent is paused.
    Run {
        /// Workload key.
        workload: String,
        /// The replica.
        replica: u32,
        /// The epoch.
        epoch: u64,
        /// When to begin stopping the container, by this node's clock.
        fence_at_ms: u64,
    },
    /// Stop the container now: the lease ends before it could stop any later.
    Fence {
        /// Workload key.
        workload: String,
        /// The replica.
        replica: u32,
        /// The epoch it ran at.
        epoch: u64,
        /// Why, for logs.
        why: String,
    },
    /// The register's acceptors changed: `set` keeps it now.
    AcceptorsChanged {
        /// Workload key.
        workload: String,
        /// The replica.
        replica: u32,
        /// The set committed.
        set: AcceptorSet,
    },
    /// Another node holds the lease; this one tries again when it may be over.
    Waiting {
        /// Workload key.
        workload: String,
        /// The replica.
        replica: u32,
        /// The holder.
        holder: String,
        /// Its epoch.
        epoch: u64,
        /// Most of its lease left.
        lease_left_ms: u64,
    },
}

/// Where one claim stands.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClaimState {
    /// Not held: acquiring (or waiting to try again).
    Seeking {
        /// Why it is not held, for `explain`.
        why: String,
    },
    /// Held at `epoch` until `valid_until_ms` by this node's clock.
    Held {
        /// The epoch.
        epoch: u64,
        /// When the lease ends, by this node's clock (drift allowed for).
        valid_until_ms: u64,
        /// Whether the host was told to run the container (and not yet to stop it).
        running: bool,
    },
}

/// One replica's lease, sought or held.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Claim {
    /// The register's acceptors, as this node last learned them.
    pub set: AcceptorSet,
    /// An acceptor this node found gone, and the member to replace it with.
    pub replacement: Option<(String, String)>,
    /// The lease asked for.
    pub lease_ms: u64,
    /// The container's stop timeout.
    pub stop_ms: u64,
    /// Where it stands.
    pub state: ClaimState,
    round: Option<Round>,
    round_deadline_ms: u64,
    next_try_ms: u64,
    /// Moves to another set in a row.
    hops: u8,
}

impl Claim {
    /// When the host must stop the container of a lease held until `valid_until_ms`.
    fn fence_at(&self, valid_until_ms: u64) -> u64 {
        valid_until_ms.saturating_sub(self.stop_ms + FENCE_SLACK_MS)
    }
}

/// Every claim of one node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Claims {
    node: String,
    claims: BTreeMap<(String, u32), Claim>,
    /// The highest ballot round seen; the next round goes above it.
    round: u64,
    rng: u64,
    transmits: VecDeque<(String, RegisterMessage)>,
    events: VecDeque<LeaseEvent>,
}

impl Claims {
    /// The claims of node `node`; `seed` spreads its retries.
    pub fn new(node: &str, seed: u64) -> Self {
        Self {
            node: node.to_owned(),
            claims: BTreeMap::new(),
            round: 0,
            rng: seed | 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Seeks the lease of `replica` of `workload`, kept by `acceptors`, for a container
    /// that takes `stop_timeout_secs` to stop. A claim already made is kept as it is.
    pub fn claim(
        &mut self,
        now_ms: u64,
        workload: &str,
        replica: u32,
        acceptors: Vec<String>,
        stop_timeout_secs: u32,
    ) {
        let key = (workload.to_owned(), replica);
        if self.claims.contains_key(&key) {
            return;
        }
        self.claims.insert(
            key.clone(),
            Claim {
                set: AcceptorSet::first(acceptors),
                replacement: None,
                lease_ms: lease_ms(stop_timeout_secs),
                stop_ms: u64::from(stop_timeout_secs) * 1_000,
                state: ClaimState::Seeking {
                    why: "acquiring the lease".to_owned(),
                },
                round: None,
                round_deadline_ms: 0,
                next_try_ms: now_ms,
                hops: 0,
            },
        );
        self.try_round(now_ms, &key);
    }

    /// Gives up the claim of a replica this node no longer runs; the host is told to stop
    /// its container if it runs. The lease is left to end by itself.
    pub fn drop_claim(&mut self, workload: &str, replica: u32, why: &str) {
        let Some(claim) = self.claims.remove(&(workload.to_owned(), replica)) else {
            return;
        };
        if let ClaimState::Held {
            epoch,
            running: true,
            ..
        } = claim.state
        {
            self.events.push_back(LeaseEvent::Fence {
                workload: workload.to_owned(),
                replica,
                epoch,
                why: why.to_owned(),
            });
        }
    }

    /// Has the claim of `replica` of `workload` replace acceptor `dead` by `with` at its
    /// next round (`None`: replace nobody). Any round that leaves this node the holder
    /// may make the change; the register's acceptors check it is one step.
    pub fn replace_acceptor(
        &mut self,
        workload: &str,
        replica: u32,
        replacement: Option<(String, String)>,
    ) {
        if let Some(claim) = self.claims.get_mut(&(workload.to_owned(), replica)) {
            claim.replacement = replacement;
        }
    }

    /// The claim of a replica, if this node makes one.
    pub fn get(&self, workload: &str, replica: u32) -> Option<&Claim> {
        self.claims.get(&(workload.to_owned(), replica))
    }

    /// Every claim.
    pub fn iter(&self) -> impl Iterator<Item = (&(String, u32), &Claim)> {
        self.claims.iter()
    }

    /// The epoch and lease end of each replica whose container this node may run now.
    pub fn running(&self) -> impl Iterator<Item = (&str, u32, u64, u64)> {
        self.claims
            .iter()
            .filter_map(|((w, r), claim)| match claim.state {
                ClaimState::Held {
                    epoch,
                    valid_until_ms,
                    running: true,
                } => Some((w.as_str(), *r, epoch, valid_until_ms)),
                _ => None,
            })
    }

    /// An acceptor's answer to one of this node's rounds.
    pub fn handle(&mut self, now_ms: u64, from: &str, message: &RegisterMessage) {
        let key = (message.workload.clone(), message.replica);
        if let RegisterStep::Refused {
            promised: Some(p), ..
        } = &message.step
        {
            self.round = self.round.max(p.round.min(MAX_COUNTER));
        }
        let Some(claim) = self.claims.get_mut(&key) else {
            return;
        };
        let Some(round) = claim.round.as_mut() else {
            return;
        };
        let (sends, outcome) = round.handle(from, &message.step);
        self.transmits.extend(sends);
        if let Some(outcome) = outcome {
            let round = claim.round.take().expect("a round in progress");
            self.finish(now_ms, &key, round, outcome);
            // A register found on another set is asked again there at once.
            if self
                .claims
                .get(&key)
                .is_some_and(|claim| claim.round.is_none() && claim.next_try_ms <= now_ms)
            {
                self.try_round(now_ms, &key);
            }
        }
    }

    /// Lets time pass: fences leases about to end, gives up rounds that took too long and
    /// starts the rounds due.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let keys: Vec<(String, u32)> = self.claims.keys().cloned().collect();
        for key in keys {
            let claim = self.claims.get_mut(&key).expect("listed");
            if let ClaimState::Held {
                epoch,
                valid_until_ms,
                running,
            } = claim.state
                && now_ms >= claim.fence_at(valid_until_ms)
            {
                if running {
                    self.events.push_back(LeaseEvent::Fence {
                        workload: key.0.clone(),
                        replica: key.1,
                        epoch,
                        why: "the lease could not be renewed in time".to_owned(),
                    });
                }
                claim.state = ClaimState::Seeking {
                    why: format!("the lease at epoch {epoch} could not be renewed"),
                };
                // A renewal still in flight must not bring the old epoch back: the
                // container stopped, and its next start is fenced by a new epoch.
                claim.round = None;
                claim.next_try_ms = now_ms;
            }
            if claim.round.is_some() && now_ms >= claim.round_deadline_ms {
                claim.round = None;
                claim.next_try_ms = now_ms + spread(&mut self.rng, RETRY_SPREAD_MS);
                if let ClaimState::Seeking { why } = &mut claim.state {
                    *why = "no quorum of acceptors answered".to_owned();
                }
            }
            if claim.round.is_none() && now_ms >= claim.next_try_ms {
                self.try_round(now_ms, &key);
            }
        }
    }

    /// When [`Claims::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.claims
            .values()
            .flat_map(|claim| {
                let fence = match claim.state {
                    ClaimState::Held { valid_until_ms, .. } => Some(claim.fence_at(valid_until_ms)),
                    ClaimState::Seeking { .. } => None,
                };
                let round = if claim.round.is_some() {
                    Some(claim.round_deadline_ms)
                } else {
                    Some(claim.next_try_ms)
                };
                [fence, round]
            })
            .flatten()
            .min()
    }

    /// The next register message for an acceptor.
    pub fn poll_transmit(&mut self) -> Option<(String, RegisterMessage)> {
        self.transmits.pop_front()
    }

    /// The next thing for the host.
    pub fn poll_event(&mut self) -> Option<LeaseEvent> {
        self.events.pop_front()
    }

    fn try_round(&mut self, now_ms: u64, key: &(String, u32)) {
        let claim = self.claims.get_mut(key).expect("a claim");
        let change = match claim.state {
            ClaimState::Held { epoch, .. } => Change::Renew { epoch },
            ClaimState::Seeking { .. } => Change::Acquire,
        };
        self.round = (self.round + 1).min(MAX_COUNTER);
        let (mut round, sends) = Round::start(
            now_ms,
            &self.node,
            &key.0,
            key.1,
            self.round,
            change,
            &claim.set,
            claim.lease_ms,
        );
        if let Some((dead, with)) = &claim.replacement {
            round.replace(dead, with);
        }
        claim.round = Some(round);
        claim.round_deadline_ms = now_ms + ROUND_TIMEOUT_MS;
        self.transmits.extend(sends);
    }

    fn finish(&mut self, now_ms: u64, key: &(String, u32), round: Round, outcome: Outcome) {
        let claim = self.claims.get_mut(key).expect("a claim");
        let (workload, replica) = (key.0.clone(), key.1);
        if !matches!(outcome, Outcome::Moved { .. }) {
            claim.hops = 0;
        }
        match outcome {
            Outcome::Committed(value) => {
                // Values written before registers named their set name none.
                if value.set != claim.set && !value.set.acceptors.is_empty() {
                    claim.set = value.set.clone();
                    if claim
                        .replacement
                        .as_ref()
                        .is_some_and(|(dead, _)| !claim.set.has(dead))
                    {
                        claim.replacement = None;
                    }
                    self.events.push_back(LeaseEvent::AcceptorsChanged {
                        workload: workload.clone(),
                        replica,
                        set: claim.set.clone(),
                    });
                }
                let valid_until_ms = holder_valid_until(round.started_ms, round.lease_ms);
                let (was_running, kept_until) = match claim.state {
                    ClaimState::Held {
                        running,
                        valid_until_ms,
                        epoch,
                    } if epoch == value.epoch => (running, valid_until_ms),
                    _ => (false, 0),
                };
                let valid_until_ms = valid_until_ms.max(kept_until);
                let may_run = now_ms < claim.fence_at(valid_until_ms);
                claim.state = ClaimState::Held {
                    epoch: value.epoch,
                    valid_until_ms,
                    running: was_running || may_run,
                };
                claim.next_try_ms = round.started_ms + RENEW_INTERVAL_MS;
                if may_run {
                    self.events.push_back(LeaseEvent::Run {
                        workload,
                        replica,
                        epoch: value.epoch,
                        fence_at_ms: claim.fence_at(valid_until_ms),
                    });
                }
            }
            Outcome::HeldBy {
                holder,
                epoch,
                lease_left_ms,
            } => {
                claim.state = ClaimState::Seeking {
                    why: format!("{holder} holds the lease at epoch {epoch}"),
                };
                claim.next_try_ms =
                    now_ms + lease_left_ms + spread(&mut self.rng, HELD_RETRY_SPREAD_MS);
                self.events.push_back(LeaseEvent::Waiting {
                    workload,
                    replica,
                    holder,
                    epoch,
                    lease_left_ms,
                });
            }
            Outcome::Lost { current } => {
                if let ClaimState::Held {
                    epoch,
                    running: true,
                    ..
                } = claim.state
                {
                    self.events.push_back(LeaseEvent::Fence {
                        workload,
                        replica,
                        epoch,
                        why: format!("the register moved on: {current:?}"),
                    });
                }
                claim.state = ClaimState::Seeking {
                    why: "the lease was lost to another node".to_owned(),
                };
                claim.next_try_ms = now_ms + spread(&mut self.rng, RETRY_SPREAD_MS);
            }
            Outcome::Moved { set } => {
                claim.set = set;
                claim.hops = claim.hops.saturating_add(1);
                claim.next_try_ms = if claim.hops <= MAX_HOPS {
                    now_ms
                } else {
                    now_ms + spread(&mut self.rng, RETRY_SPREAD_MS)
                };
            }
            Outcome::Refused { highest, reason } => {
                if let Some(highest) = highest {
                    self.round = self.round.max(highest.round.min(MAX_COUNTER));
                }
                if let ClaimState::Seeking { why } = &mut claim.state {
                    *why = format!("acceptors refused: {reason}");
                }
                claim.next_try_ms = now_ms + spread(&mut self.rng, RETRY_SPREAD_MS);
            }
        }
    }
}

/// A wait between 1 and `most` ms (xorshift: only spreads retries).
fn spread(rng: &mut u64, most: u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    1 + *rng % most
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::register::{Acceptor, Answer, acceptor_lease_ms};

    struct Net {
        acceptors: BTreeMap<String, Acceptor>,
        /// Acceptors that answer nothing.
        down: Vec<String>,
    }

    impl Net {
        fn new() -> Self {
            Self {
                acceptors: ["a", "b", "c"]
                    .into_iter()
                    .map(|n| (n.to_owned(), Acceptor::default()))
                    .collect(),
                down: Vec::new(),
            }
        }

        /// Delivers everything `claims` sends, and the answers, at `now_ms`.
        fn pump(&mut self, now_ms: u64, claims: &mut Claims) {
            while let Some((to, message)) = claims.poll_transmit() {
                if self.down.contains(&to) {
                    continue;
                }
                let acceptor = self.acceptors.get_mut(&to).expect("an acceptor");
                let answer = acceptor.handle(
                    now_ms,
                    &claims.node,
                    &message.workload,
                    message.replica,
                    &message.step,
                );
                let step = match answer.expect("an acceptor's step") {
                    Answer::Reply(step) | Answer::StoreThenReply(_, step) => step,
                };
                let reply = RegisterMessage {
                    workload: message.workload,
                    replica: message.replica,
                    step,
                };
                claims.handle(now_ms, &to, &reply);
            }
        }
    }

    fn acceptors() -> Vec<String> {
        vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]
    }

    fn events(claims: &mut Claims) -> Vec<LeaseEvent> {
        std::iter::from_fn(|| claims.poll_event()).collect()
    }

    #[test]
    fn a_claim_runs_renews_and_fences_before_its_lease_ends() {
        let mut net = Net::new();
        let mut x = Claims::new("x", 1);
        x.claim(0, "default/db", 0, acceptors(), 2);
        net.pump(0, &mut x);
        assert_eq!(
            events(&mut x),
            [LeaseEvent::Run {
                workload: "default/db".to_owned(),
                replica: 0,
                epoch: 1,
                fence_at_ms: holder_valid_until(0, lease_ms(2)) - 2_000 - FENCE_SLACK_MS,
            }]
        );
        // Renewals keep it for as long as a quorum answers.
        let mut now;
        for _ in 0..10 {
            now = x.poll_timeout().expect("a renewal is due");
            x.handle_timeout(now);
            net.pump(now, &mut x);
        }
        // Each renewal moves the deadline on.
        assert!(
            events(&mut x)
                .iter()
                .all(|e| matches!(e, LeaseEvent::Run { epoch: 1, .. }))
        );
        assert_eq!(x.running().count(), 1);
        // Two acceptors gone: the container is stopped before the lease ends.
        net.down = vec!["b".to_owned(), "c".to_owned()];
        let (_, _, _, valid_until) = x.running().next().expect("running");
        let fenced_at = loop {
            now = x.poll_timeout().expect("a timer");
            x.handle_timeout(now);
            net.pump(now, &mut x);
            if events(&mut x)
                .iter()
                .any(|e| matches!(e, LeaseEvent::Fence { .. }))
            {
                break now;
            }
        };
        assert!(fenced_at + 2_000 + FENCE_SLACK_MS <= valid_until);
        assert_eq!(x.running().count(), 0);
    }

    #[test]
    fn a_second_claimant_waits_for_the_lease_and_runs_at_the_next_epoch() {
        let mut net = Net::new();
        let mut x = Claims::new("x", 1);
        let mut y = Claims::new("y", 2);
        x.claim(0, "default/db", 0, acceptors(), 0);
        net.pump(0, &mut x);
        events(&mut x);
        y.claim(100, "default/db", 0, acceptors(), 0);
        net.pump(100, &mut y);
        let waiting = events(&mut y);
        assert!(
            matches!(&waiting[..], [LeaseEvent::Waiting { holder, .. }] if holder == "x"),
            "{waiting:?}"
        );
        // x stops renewing (it died): y runs once the acceptors' lease is over.
        let ran_at = loop {
            let now = y.poll_timeout().expect("a retry");
            y.handle_timeout(now);
            net.pump(now, &mut y);
            if let Some(LeaseEvent::Run { epoch, .. }) = events(&mut y)
                .into_iter()
                .find(|e| matches!(e, LeaseEvent::Run { .. }))
            {
                assert_eq!(epoch, 2);
                break now;
            }
        };
        assert!(ran_at >= acceptor_lease_ms(lease_ms(0)));
        // x comes back and finds it lost.
        x.handle_timeout(ran_at);
        net.pump(ran_at, &mut x);
        assert_eq!(x.running().count(), 0);
    }
}
