//! An exhaustive model check of the lease register: two proposers and three acceptors,
//! every interleaving of message delivery (so every reordering), with message loss,
//! duplication, a proposer that dies and an acceptor that restarts, and clocks that run
//! 1 % fast or slow. In every state reached, no two proposers may believe they hold the
//! replica at overlapping moments of real time.
//!
//! It drives the negotiation crate's own [`Claims`] and [`Acceptor`], not a copy of the
//! protocol. The search is a depth-first walk over states, each state visited once (by
//! its hash), to a bound on faults and on jumps of time (to the next timer of either
//! proposer). Exhaustive walks cover a contended acquisition and a takeover from a
//! holder; random walks cover a minute of time with many more faults.
//! `PARLEY_MODEL_TICKS` (default 0 for contention, 2 for takeover) and
//! `PARLEY_MODEL_WALKS` (default 3,000) widen the search: `PARLEY_MODEL_TICKS=3` visits
//! tens of millions of states.
//!
//! A search of our own rather than `stateright`: the state is the crate's own types, the
//! transitions are a page, and a dependency would cost build time for no more rigour.

// Proposers and acceptors are indices into parallel arrays (names, clock rates, states).
#![allow(clippy::needless_range_loop)]

use std::collections::HashSet;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use parley_negotiation::lease::{ClaimState, Claims};
use parley_negotiation::register::{Acceptor, Answer, RegisterMessage, SlotState};

const WORKLOAD: &str = "default/db";
/// The register's first set is the first three; `d` joins when `c` is replaced.
const ACCEPTORS: [&str; 4] = ["a", "b", "c", "d"];
const PROPOSERS: [&str; 2] = ["x", "y"];
/// How far real time moves when no proposer has a timer.
const TICK_MS: u64 = 500;
/// Clock rates, per mille of real time: one proposer fast, the other slow, and the
/// acceptors spread across both.
const PROPOSER_RATE: [u64; 2] = [1_010, 990];
const ACCEPTOR_RATE: [u64; 4] = [990, 1_010, 1_000, 1_005];

/// The acceptors a workload's record names: the register's first set.
fn first_set() -> Vec<String> {
    ACCEPTORS[..3].iter().map(|a| (*a).to_owned()).collect()
}

/// What may still go wrong in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Budget {
    losses: u8,
    duplicates: u8,
    proposer_deaths: u8,
    acceptor_restarts: u8,
    /// Jumps of real time to the next timer.
    ticks: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct State {
    now_ms: u64,
    /// `None`: dead.
    proposers: [Option<Claims>; 2],
    /// Whether each proposer has made its claim yet.
    claimed: [bool; 2],
    acceptors: [Acceptor; 4],
    /// Messages in flight, kept sorted: (from, to, message).
    network: Vec<(String, String, RegisterMessage)>,
    budget: Budget,
    /// Each proposer's latest holding, in real ms: (epoch, from, until).
    holdings: [Option<(u64, u64, u64)>; 2],
}

fn local(now_ms: u64, rate: u64) -> u64 {
    now_ms * rate / 1_000
}

fn real(local_ms: u64, rate: u64) -> u64 {
    // Rounded up: a lease is never taken to end earlier than it does.
    (local_ms * 1_000).div_ceil(rate)
}

impl State {
    fn initial(budget: Budget) -> Self {
        Self {
            now_ms: 0,
            proposers: [Some(Claims::new("x", 1)), Some(Claims::new("y", 2))],
            claimed: [false, false],
            acceptors: Default::default(),
            network: Vec::new(),
            budget,
            holdings: [None, None],
        }
    }

    /// Moves what the proposers sent into the network, and notes their holdings;
    /// returns a violation if two holdings overlap.
    fn collect(&mut self) -> Result<(), String> {
        for p in 0..2 {
            let Some(claims) = self.proposers[p].as_mut() else {
                continue;
            };
            while let Some((to, message)) = claims.poll_transmit() {
                self.network.push((PROPOSERS[p].to_owned(), to, message));
            }
            while claims.poll_event().is_some() {}
            if let Some(claim) = claims.get(WORKLOAD, 0)
                && let ClaimState::Held {
                    epoch,
                    valid_until_ms,
                    ..
                } = claim.state
            {
                let until = real(valid_until_ms, PROPOSER_RATE[p]);
                let from = match self.holdings[p] {
                    Some((held, from, _)) if held == epoch => from,
                    _ => self.now_ms,
                };
                if until > self.now_ms {
                    self.holdings[p] = Some((epoch, from, until));
                }
            }
        }
        self.network.sort();
        if let [Some((e0, f0, u0)), Some((e1, f1, u1))] = self.holdings
            && f0 < u1
            && f1 < u0
        {
            return Err(format!(
                "x held epoch {e0} over [{f0}, {u0}) ms and y epoch {e1} over [{f1}, {u1}) ms"
            ));
        }
        Ok(())
    }

    /// Delivers message `index` (kept in flight as well when `keep`: a duplicate) to its
    /// acceptor, and the acceptor's answer straight back to the proposer unless
    /// `lose_answer`. Answers travel at once: the order in which acceptors take requests
    /// already orders everything a proposer can tell apart.
    fn deliver(&mut self, index: usize, keep: bool, lose_answer: bool) {
        let (from, to, message) = if keep {
            self.network[index].clone()
        } else {
            self.network.remove(index)
        };
        let a = ACCEPTORS
            .iter()
            .position(|n| *n == to)
            .expect("an acceptor");
        let now = local(self.now_ms, ACCEPTOR_RATE[a]);
        let answer = self.acceptors[a].handle(
            now,
            &from,
            &message.workload,
            message.replica,
            &message.step,
        );
        let step = match answer {
            Some(Answer::Reply(step) | Answer::StoreThenReply(_, step)) => step,
            None => return,
        };
        if lose_answer {
            return;
        }
        let reply = RegisterMessage {
            workload: message.workload,
            replica: message.replica,
            step,
        };
        let p = PROPOSERS
            .iter()
            .position(|n| *n == from)
            .expect("a proposer");
        if let Some(claims) = self.proposers[p].as_mut() {
            claims.handle(local(self.now_ms, PROPOSER_RATE[p]), &to, &reply);
        }
    }

    /// Delivers everything in flight, in order, and what it leads to, with no faults: to
    /// set up the state a search starts from.
    fn deliver_all(&mut self) {
        self.collect().expect("a state set up without faults");
        while !self.network.is_empty() {
            self.deliver(0, false, false);
            self.collect().expect("a state set up without faults");
        }
    }

    /// Lets real time pass to the next proposer timer (nothing else changes in between).
    fn tick(&mut self) {
        let next = (0..2)
            .filter_map(|p| {
                let due = self.proposers[p].as_ref()?.poll_timeout()?;
                Some(real(due, PROPOSER_RATE[p]))
            })
            .min()
            .unwrap_or(self.now_ms + TICK_MS);
        self.now_ms = next.max(self.now_ms + 1);
        for p in 0..2 {
            if let Some(claims) = self.proposers[p].as_mut() {
                let now = local(self.now_ms, PROPOSER_RATE[p]);
                if claims.poll_timeout().is_some_and(|t| t <= now) {
                    claims.handle_timeout(now);
                }
            }
            // A dead proposer's lease simply runs out; it is no longer anyone's belief
            // once its end passed.
            if let Some((_, _, until)) = self.holdings[p]
                && until <= self.now_ms
                && self.proposers[p].is_none()
            {
                self.holdings[p] = None;
            }
        }
    }

    /// Every state one step from this one.
    fn successors(&self, max_ms: u64) -> Vec<Result<State, String>> {
        let mut next = Vec::new();
        let mut push = |mut state: State| next.push(state.collect().map(|()| state));
        for p in 0..2 {
            if !self.claimed[p] && self.proposers[p].is_some() {
                let mut s = self.clone();
                s.claimed[p] = true;
                let now = local(s.now_ms, PROPOSER_RATE[p]);
                s.proposers[p]
                    .as_mut()
                    .expect("alive")
                    .claim(now, WORKLOAD, 0, first_set(), 0);
                push(s);
            }
        }
        for index in 0..self.network.len() {
            // Equal messages in flight lead to equal states: try the first only.
            if index > 0 && self.network[index] == self.network[index - 1] {
                continue;
            }
            let mut s = self.clone();
            s.deliver(index, false, false);
            push(s);
            if self.budget.duplicates > 0 {
                let mut s = self.clone();
                s.budget.duplicates -= 1;
                s.deliver(index, true, false);
                push(s);
            }
            if self.budget.losses > 0 {
                let mut s = self.clone();
                s.budget.losses -= 1;
                s.network.remove(index);
                push(s);
                let mut s = self.clone();
                s.budget.losses -= 1;
                s.deliver(index, false, true);
                push(s);
            }
        }
        if self.budget.proposer_deaths > 0 {
            for p in 0..2 {
                if self.proposers[p].is_some() {
                    let mut s = self.clone();
                    s.budget.proposer_deaths -= 1;
                    s.proposers[p] = None;
                    push(s);
                }
            }
        }
        if self.budget.acceptor_restarts > 0 {
            for a in 0..ACCEPTORS.len() {
                // What it answered was stored first: its store holds every slot.
                let stored: Vec<((String, u32), SlotState)> = self.acceptors[a]
                    .view(0, WORKLOAD, 0)
                    .map(|(slot, _)| ((WORKLOAD.to_owned(), 0), slot.clone()))
                    .into_iter()
                    .collect();
                if stored.is_empty() {
                    continue;
                }
                let mut s = self.clone();
                s.budget.acceptor_restarts -= 1;
                s.acceptors[a] = Acceptor::restore(local(s.now_ms, ACCEPTOR_RATE[a]), stored);
                push(s);
            }
        }
        if self.budget.ticks > 0 && self.now_ms < max_ms {
            let mut s = self.clone();
            s.budget.ticks -= 1;
            s.tick();
            if s.now_ms <= max_ms {
                push(s);
            }
        }
        next
    }
}

fn fingerprint(state: &State) -> u64 {
    let mut hasher = DefaultHasher::new();
    state.hash(&mut hasher);
    hasher.finish()
}

/// Walks every state reachable from `initial` within `max_ms` of real time; returns how
/// many there were, and in how many `counted` held (by default: y held the lease).
fn explore(initial: State, max_ms: u64) -> Result<(usize, usize), String> {
    explore_counting(initial, max_ms, |state| state.holdings[1].is_some())
}

fn explore_counting(
    initial: State,
    max_ms: u64,
    counted: impl Fn(&State) -> bool,
) -> Result<(usize, usize), String> {
    let mut seen = HashSet::new();
    let mut stack = vec![initial];
    let mut held = 0;
    while let Some(state) = stack.pop() {
        if !seen.insert(fingerprint(&state)) {
            continue;
        }
        if counted(&state) {
            held += 1;
        }
        for next in state.successors(max_ms) {
            stack.push(next?);
        }
    }
    Ok((seen.len(), held))
}

/// Follows `walks` random paths of up to `steps` steps each; returns the states visited.
fn random_walks(
    initial: &State,
    walks: u32,
    steps: u32,
    max_ms: u64,
    seed: u64,
) -> Result<u64, String> {
    let mut rng = seed | 1;
    let mut visited = 0;
    for _ in 0..walks {
        let mut state = initial.clone();
        for _ in 0..steps {
            let mut next = state.successors(max_ms);
            if next.is_empty() {
                break;
            }
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let pick = (rng % next.len() as u64) as usize;
            state = next.swap_remove(pick)?;
            visited += 1;
        }
    }
    Ok(visited)
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

const NO_FAULTS: Budget = Budget {
    losses: 0,
    duplicates: 0,
    proposer_deaths: 0,
    acceptor_restarts: 0,
    ticks: 0,
};

impl State {
    /// x holds the lease at epoch 1 (its first round went through at time 0), and y has
    /// not claimed yet.
    fn x_holding(budget: Budget) -> Self {
        let mut state = Self::initial(budget);
        state.proposers[0]
            .as_mut()
            .expect("alive")
            .claim(0, WORKLOAD, 0, first_set(), 0);
        state.claimed[0] = true;
        state.deliver_all();
        assert!(state.holdings[0].is_some(), "x holds the lease");
        state
    }
}

/// Both proposers claim the replica at once: every order of every message, with one
/// loss, one duplicate and one death, and one jump of time (a round's timeout, a retry).
#[test]
fn contention_every_interleaving_with_loss_duplication_and_death() {
    let budget = Budget {
        losses: 1,
        duplicates: 1,
        proposer_deaths: 1,
        ticks: env_or("PARLEY_MODEL_TICKS", 0) as u8,
        ..NO_FAULTS
    };
    let (states, held) = explore(State::initial(budget), 60_000).unwrap_or_else(|v| panic!("{v}"));
    println!("contention: {states} states, y held in {held}");
    assert!(held > 0 && states > 10_000, "{states} states, {held} held");
}

/// x holds the lease; y claims it while x renews or dies, a message is lost or an
/// acceptor restarts: every order, across two jumps of time (to a renewal, and past the
/// lease of a dead holder to y's takeover).
fn takeover(losses: u8, acceptor_restarts: u8) {
    let budget = Budget {
        losses,
        proposer_deaths: 1,
        acceptor_restarts,
        ticks: env_or("PARLEY_MODEL_TICKS", 2) as u8,
        ..NO_FAULTS
    };
    let (states, held) =
        explore(State::x_holding(budget), 60_000).unwrap_or_else(|v| panic!("{v}"));
    println!("takeover: {states} states, y took over in {held}");
    assert!(held > 0 && states > 100_000, "{states} states, {held} held");
}

#[test]
fn takeover_every_interleaving_with_a_loss_and_a_death() {
    takeover(1, 0);
}

#[test]
fn takeover_every_interleaving_with_an_acceptor_restart_and_a_death() {
    takeover(0, 1);
}

/// Long runs the exhaustive walks cannot reach: random paths through a minute of real
/// time, with several losses, duplicates, a death and acceptor restarts.
#[test]
fn random_long_runs_never_overlap() {
    let budget = Budget {
        losses: 6,
        duplicates: 4,
        proposer_deaths: 1,
        acceptor_restarts: 2,
        ticks: 200,
    };
    let walks = env_or("PARLEY_MODEL_WALKS", 3_000) as u32;
    let visited = random_walks(&State::initial(budget), walks, 400, 60_000, 7)
        .unwrap_or_else(|v| panic!("{v}"));
    println!("random: {visited} steps in {walks} walks");
    assert!(visited > u64::from(walks) * 10);
}

impl State {
    /// x holds the lease and takes c for gone: it replaces c by d at its next renewals,
    /// while c in fact still answers, with what it accepted, whoever asks.
    fn x_replacing_c(budget: Budget) -> Self {
        let mut state = Self::x_holding(budget);
        state.proposers[0]
            .as_mut()
            .expect("alive")
            .replace_acceptor(WORKLOAD, 0, Some(("c".to_owned(), "d".to_owned())));
        state
    }

    /// The generation of the acceptor set proposer `p` last learned.
    fn generation(&self, p: usize) -> u64 {
        self.proposers[p]
            .as_ref()
            .and_then(|claims| claims.get(WORKLOAD, 0))
            .map_or(0, |claim| claim.set.generation)
    }
}

impl State {
    /// [`State::x_replacing_c`] after x's next `renewals` renewals went through with
    /// nothing lost: 1 leaves the register on both sets, 2 on the new one alone.
    fn x_replaced_c(budget: Budget, renewals: u64) -> Self {
        let mut state = Self::x_replacing_c(budget);
        for _ in 0..renewals {
            state.tick();
            state.deliver_all();
        }
        assert_eq!(
            state.generation(0),
            renewals,
            "x's renewals changed the set"
        );
        state
    }
}

/// One step of a replacement each (x moving the register from the first set to both,
/// then from both to the new set alone) while y, which knows only the record's first set,
/// claims the replica, x dies and a message is lost, and c, taken for gone, still answers
/// whoever asks with what it accepted: every order, across a jump of time to x's renewal.
fn replacement_step(renewals_before: u64) -> usize {
    let budget = Budget {
        losses: 1,
        proposer_deaths: 1,
        ticks: env_or("PARLEY_MODEL_TICKS", 0) as u8 + 1,
        ..NO_FAULTS
    };
    let initial = State::x_replaced_c(budget, renewals_before);
    let (states, stepped) = explore_counting(initial, 60_000, |state| {
        state.generation(0) > renewals_before || state.generation(1) > renewals_before
    })
    .unwrap_or_else(|v| panic!("{v}"));
    println!(
        "replacement step {}: {states} states, taken in {stepped}",
        renewals_before + 1
    );
    assert!(
        stepped > 0 && states > 10_000,
        "{states} states, {stepped} stepped"
    );
    states
}

#[test]
fn replacing_an_acceptor_first_step_every_interleaving() {
    replacement_step(0);
}

#[test]
fn replacing_an_acceptor_second_step_every_interleaving() {
    replacement_step(1);
}

/// The register is on the new set (or still on both) and x dies: y, knowing only the
/// first set, must find the register through a, b or c (which answers from its old value,
/// or restarts) and wait out x's lease before it takes over: every order, with a loss, a
/// duplicate (on the new set) and an acceptor restart, across two jumps of time. While x lives on, the
/// steps above and the random walks below cover y's contention.
fn takeover_after_replacement(renewals_before: u64, duplicates: u8) {
    let budget = Budget {
        losses: 1,
        duplicates,
        acceptor_restarts: 1,
        ticks: env_or("PARLEY_MODEL_TICKS", 2) as u8,
        ..NO_FAULTS
    };
    let mut initial = State::x_replaced_c(budget, renewals_before);
    initial.proposers[0] = None;
    // y's first prepare is refused (x's ballots went higher) and only teaches it a
    // ballot: played out before the search, which starts from y's second try.
    let y = initial.proposers[1].as_mut().expect("alive");
    y.claim(
        local(initial.now_ms, PROPOSER_RATE[1]),
        WORKLOAD,
        0,
        first_set(),
        0,
    );
    initial.claimed[1] = true;
    initial.deliver_all();
    let (states, taken) = explore_counting(initial, 60_000, |state| {
        state.holdings[1].is_some() && state.generation(1) >= 1
    })
    .unwrap_or_else(|v| panic!("{v}"));
    println!(
        "takeover after {renewals_before} replacement steps: {states} states, y took over in {taken}"
    );
    assert!(
        taken > 0 && states > 1_000,
        "{states} states, {taken} taken"
    );
}

#[test]
fn takeover_on_the_new_set_every_interleaving() {
    takeover_after_replacement(2, 1);
}

#[test]
fn takeover_on_both_sets_every_interleaving() {
    // Without duplicates: with four acceptors in play, one more fault is ten times the
    // states (4.4 million, four minutes).
    takeover_after_replacement(1, 0);
}

/// Random paths through a minute with the replacement under way, and many more faults.
#[test]
fn random_long_runs_with_a_replacement_never_overlap() {
    let budget = Budget {
        losses: 6,
        duplicates: 4,
        proposer_deaths: 1,
        acceptor_restarts: 2,
        ticks: 200,
    };
    let walks = env_or("PARLEY_MODEL_WALKS", 3_000) as u32;
    let visited = random_walks(&State::x_replacing_c(budget), walks, 400, 60_000, 11)
        .unwrap_or_else(|v| panic!("{v}"));
    println!("random with a replacement: {visited} steps in {walks} walks");
    assert!(visited > u64::from(walks) * 10);
}

/// The check itself must be able to fail: acceptors that forget what they promised and
/// accepted (a store that lost their writes) let two proposers hold the replica at once.
#[test]
fn the_check_finds_overlap_when_acceptors_forget() {
    let budget = Budget {
        ticks: 1,
        ..NO_FAULTS
    };
    let mut state = State::x_holding(budget);
    state.acceptors[0] = Acceptor::default();
    state.acceptors[1] = Acceptor::default();
    let violation = explore(state, 60_000).expect_err("amnesiac acceptors let y in");
    assert!(violation.contains("x held epoch 1"), "{violation}");
}
