//! The lease register of one replica of a strong workload, and the consensus round that
//! changes it.
//!
//! Each replica of a `strong` workload has a register `{epoch, holder, lease, acceptors}`
//! kept by a few acceptor nodes (three, or every member when there are fewer). It changes
//! only by a
//! compare-and-set round of single-decree Paxos, as in CASPaxos: a proposer gathers
//! promises for a ballot from a quorum, takes the value of the highest ballot any of them
//! accepted, applies its change and has a quorum accept the result. There is no log to
//! keep, compact or replay: a register is one value, and a change is one round, which is
//! all a lease needs (why not Raft: see `docs/strong-consistency.md`).
//!
//! Leases are measured on each node's own clock, never compared across nodes:
//! - an acceptor notes when, by its clock, it accepted a value with a holder, and reports
//!   in its promises how much of that lease (plus a drift allowance and a margin) is left;
//! - a proposer may hand the replica to a new holder only when every promise of its
//!   quorum says the previous holder's lease is over;
//! - a holder counts its lease from the moment it *started* the round that granted it
//!   (before any acceptor accepted), and treats it as shorter by the drift allowance.
//!
//! Clocks that run within ±1 % of real time ([`DRIFT_PER_MILLE`]) can then never let
//! two holders' leases overlap in real time. Acceptors also refuse,
//! from their own view, a value that takes a live lease from its holder, so a proposer
//! that ignores promises (a hostile member) still cannot seize a replica.
//!
//! The acceptors are part of the value ([`AcceptorSet`]), so a dead one is replaced by a
//! change of the register like any other, in two steps, as in joint consensus: from set
//! `A` to `{B, leaving A}`, where every quorum is a majority of both, then, once that
//! value is known chosen, to `B` alone. A proposer goes on to phase 2 only when the value
//! its quorum reports names exactly the set it gathered that quorum from; otherwise it
//! starts again on the set it saw ([`Outcome::Moved`]). A value chosen by a majority of
//! `A` alone can then never be missed by a proposer on `B` alone: between them lies a
//! value chosen by majorities of both, which every later quorum of either set sees.
//!
//! This module is pure data: [`Acceptor`] answers register messages; [`Round`] is one
//! proposer's round. [`crate::lease`] drives rounds for the replicas a node holds.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The part of a lease a holder runs its container for, on top of the time the container
/// gets to stop: a holder that cannot renew has stopped its container when its lease ends.
///
/// A failover waits out a lost holder's lease, so this (with the stop timeout) sets its
/// length: 4 s, with [`RENEW_INTERVAL_MS`] of 1 s, keeps a failover at the default stop
/// timeout (10 s) under 15 s. A holder fences about 2.9 s after the start of its last
/// renewal that succeeded, so it has two tries (each up to [`ROUND_TIMEOUT_MS`]) before it
/// stops its container. It was 5 s with renewals every 1.5 s: a third fewer messages, and
/// failovers of 15.7 s (BENCHMARKS.md).
pub const LEASE_RUN_MS: u64 = 4_000;

/// How far, per mille, a clock's rate may stray from real time: the holder treats its
/// lease as this much shorter, the acceptor as this much longer.
///
/// Each side allows for its own clock, so together they cover two clocks 2 % apart. A
/// holder whose clock runs 1 % slow uses `L × 0.99` of its clock, which is at most `L`
/// of real time; an acceptor whose clock runs 1 % fast reports over `L × 1.01 + margin`
/// of its clock, at least `L + margin / 1.01` of real time. So the margin is all that
/// the worst pair of clocks eats into (a unit test checks this for every stop timeout).
/// It was 20, 2 % on each side: twice what ±1 % clocks need, and 0.4 s on every failover.
pub const DRIFT_PER_MILLE: u64 = 10;

/// Time an acceptor adds to a lease beyond the drift allowance before it reports the lease
/// over: covers the gap between a holder's last check and its container's end.
pub const LEASE_MARGIN_MS: u64 = 500;

/// How often a holder renews its lease: two chances before it must fence.
pub const RENEW_INTERVAL_MS: u64 = 1_000;

/// How long a proposer waits for a quorum's answers before it gives the round up.
pub const ROUND_TIMEOUT_MS: u64 = 1_000;

/// Acceptors of a strong workload's registers, when that many members are live.
pub const DEFAULT_ACCEPTORS: usize = 3;

/// Most acceptors a register may name.
pub const MAX_ACCEPTORS: usize = 5;

/// Most register slots one acceptor keeps, whatever its peers ask: the backstop that
/// bounds its memory and store.
pub const MAX_SLOTS: usize = 65_536;

/// Longest lease taken from a peer: [`LEASE_RUN_MS`] plus the longest stop timeout.
pub const MAX_LEASE_MS: u64 = LEASE_RUN_MS + crate::workload::MAX_STOP_TIMEOUT_SECS as u64 * 1_000;

/// Highest epoch or ballot round taken from a peer, far from `u64::MAX` so that a
/// hostile peer cannot end a register's life by pushing it there.
pub const MAX_COUNTER: u64 = 1 << 48;

/// Longest node id a register message may name.
const MAX_ID_LEN: usize = 512;

/// The lease a holder asks for when its container takes `stop_timeout_secs` to stop.
pub fn lease_ms(stop_timeout_secs: u32) -> u64 {
    LEASE_RUN_MS + u64::from(stop_timeout_secs) * 1_000
}

/// `ms` widened or narrowed by the drift allowance.
fn drift(ms: u64) -> u64 {
    ms * DRIFT_PER_MILLE / 1_000
}

/// How much of a lease of `lease_ms` granted by a round started at `started_ms` its
/// holder may use, by its own clock: until the returned time.
pub fn holder_valid_until(started_ms: u64, lease_ms: u64) -> u64 {
    started_ms + lease_ms - drift(lease_ms)
}

/// How long after accepting a lease of `lease_ms` an acceptor reports it over.
pub fn acceptor_lease_ms(lease_ms: u64) -> u64 {
    lease_ms + drift(lease_ms) + LEASE_MARGIN_MS
}

/// The smallest quorum of `acceptors` acceptors.
pub fn quorum(acceptors: usize) -> usize {
    acceptors / 2 + 1
}

/// A Paxos ballot: rounds are ordered by number, then by proposer, so that two proposers
/// never share one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ballot {
    /// Grows with every round a proposer starts after seeing a higher one.
    pub round: u64,
    /// The proposer: it must be the message's authenticated sender.
    pub node: String,
}

/// Who keeps a register: its acceptors and, while the register moves from one set to
/// the next, the set it leaves. Then a quorum is a majority of each.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AcceptorSet {
    /// Grows by one with each step of a change, so that two sets that name the same
    /// nodes at different times are told apart.
    pub generation: u64,
    /// The acceptors.
    pub acceptors: Vec<String>,
    /// The set being left, during a change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaving: Option<Vec<String>>,
}

impl AcceptorSet {
    /// The first set of a register: the acceptors its workload's record names.
    pub fn first(acceptors: Vec<String>) -> Self {
        Self {
            generation: 0,
            acceptors,
            leaving: None,
        }
    }

    /// Every node that takes part in a round on this set, each once.
    pub fn members(&self) -> Vec<String> {
        let mut members = self.acceptors.clone();
        for node in self.leaving.iter().flatten() {
            if !members.contains(node) {
                members.push(node.clone());
            }
        }
        members
    }

    /// Whether `node` takes part in rounds on this set.
    pub fn has(&self, node: &str) -> bool {
        self.acceptors
            .iter()
            .chain(self.leaving.iter().flatten())
            .any(|a| a == node)
    }

    /// Whether the nodes for which `answered` holds make a quorum of this set.
    pub fn is_quorum(&self, answered: impl Fn(&str) -> bool) -> bool {
        let majority =
            |set: &[String]| set.iter().filter(|a| answered(a)).count() >= quorum(set.len());
        majority(&self.acceptors) && self.leaving.as_deref().is_none_or(majority)
    }

    /// A value written before registers named their acceptors: it was kept by the first
    /// set, the record's.
    fn is_unnamed(&self) -> bool {
        self.generation == 0 && self.acceptors.is_empty()
    }

    /// Whether a value on set `self` may be taken as a value on `assumed`.
    fn matches(&self, assumed: &AcceptorSet) -> bool {
        self == assumed || (self.is_unnamed() && assumed.generation == 0)
    }

    /// The first step of replacing `dead` by `with`: both sets at once.
    fn replacing(&self, dead: &str, with: &str) -> Option<Self> {
        if self.leaving.is_some() || !self.acceptors.iter().any(|a| a == dead) || self.has(with) {
            return None;
        }
        let acceptors = self
            .acceptors
            .iter()
            .map(|a| {
                if a == dead {
                    with.to_owned()
                } else {
                    a.clone()
                }
            })
            .collect();
        Some(Self {
            generation: self.generation + 1,
            acceptors,
            leaving: Some(self.acceptors.clone()),
        })
    }

    /// The last step of a change: the new set alone.
    fn settled(&self) -> Option<Self> {
        self.leaving.as_ref()?;
        Some(Self {
            generation: self.generation + 1,
            acceptors: self.acceptors.clone(),
            leaving: None,
        })
    }

    /// Whether `next` is one step on from this set: both sets at once after one
    /// acceptor replaced, or the new set alone after both.
    fn steps_to(&self, next: &AcceptorSet) -> bool {
        if next.generation != self.generation + 1 {
            return false;
        }
        match (&self.leaving, &next.leaving) {
            (None, Some(leaving)) => {
                let added = next
                    .acceptors
                    .iter()
                    .filter(|a| !self.acceptors.contains(a));
                leaving == &self.acceptors
                    && next.acceptors.len() == self.acceptors.len()
                    && added.count() == 1
            }
            (Some(_), None) => next.acceptors == self.acceptors,
            _ => false,
        }
    }

    /// Checks a set a peer sent.
    fn check(&self) -> Result<(), String> {
        if self.generation > MAX_COUNTER {
            return Err(format!(
                "acceptor set generation {} is out of range",
                self.generation
            ));
        }
        for set in std::iter::once(&self.acceptors).chain(self.leaving.as_ref()) {
            if set.len() > MAX_ACCEPTORS || (set.is_empty() && !self.is_unnamed()) {
                return Err(format!(
                    "it names {} acceptors, not 1 to {MAX_ACCEPTORS}",
                    set.len()
                ));
            }
            for (i, node) in set.iter().enumerate() {
                if node.is_empty() || node.len() > MAX_ID_LEN || set[..i].contains(node) {
                    return Err("an acceptor is named twice, empty or too long".to_owned());
                }
            }
        }
        Ok(())
    }
}

/// The register of one replica.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RegisterValue {
    /// The fencing token: grows by one each time the replica gets a holder.
    pub epoch: u64,
    /// The node that may run the replica while its lease lasts (`None`: nobody).
    pub holder: Option<String>,
    /// How long each grant or renewal of the lease lasts.
    pub lease_ms: u64,
    /// Who keeps the register (empty in values written before it was part of them).
    #[serde(default)]
    pub set: AcceptorSet,
}

/// One step of the register protocol, about one replica.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RegisterMessage {
    /// Workload key (`namespace/name`).
    pub workload: String,
    /// The replica.
    pub replica: u32,
    /// What this message says.
    pub step: RegisterStep,
}

/// The steps of a round.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum RegisterStep {
    /// Phase 1a: promise to take no lower ballot, and say what you accepted.
    Prepare {
        /// The proposer's ballot.
        ballot: Ballot,
    },
    /// Phase 1b: the promise, with the value of the highest ballot accepted and how much
    /// of its lease is left by the acceptor's clock.
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// The highest ballot accepted and its value.
        accepted: Option<(Ballot, RegisterValue)>,
        /// What is left of the accepted holder's lease, drift and margin included.
        lease_left_ms: u64,
    },
    /// Phase 2a: accept this value.
    Propose {
        /// The proposer's ballot.
        ballot: Ballot,
        /// The new value.
        value: RegisterValue,
    },
    /// Phase 2b: the value was accepted (and stored) at this ballot.
    Accepted {
        /// The ballot.
        ballot: Ballot,
    },
    /// A prepare or proposal refused.
    Refused {
        /// The ballot refused.
        ballot: Ballot,
        /// The higher ballot promised, when that is why.
        promised: Option<Ballot>,
        /// Why, for logs.
        reason: String,
    },
}

impl RegisterMessage {
    /// Checks every size and number a peer chose before anything is kept or compared.
    pub fn check(&self) -> Result<(), String> {
        let id = |what: &str, id: &str| {
            if id.is_empty() || id.len() > MAX_ID_LEN {
                Err(format!(
                    "its {what} is empty or longer than {MAX_ID_LEN} bytes"
                ))
            } else {
                Ok(())
            }
        };
        id("workload", &self.workload)?;
        if self.replica >= crate::workload::MAX_REPLICAS {
            return Err(format!("replica {} is out of range", self.replica));
        }
        let ballot = |b: &Ballot| {
            id("ballot's node", &b.node)?;
            if b.round > MAX_COUNTER {
                return Err(format!("ballot round {} is out of range", b.round));
            }
            Ok(())
        };
        let value = |v: &RegisterValue| {
            if v.epoch > MAX_COUNTER {
                return Err(format!("epoch {} is out of range", v.epoch));
            }
            if v.lease_ms > MAX_LEASE_MS {
                return Err(format!(
                    "a lease of {} ms is longer than allowed",
                    v.lease_ms
                ));
            }
            if let Some(holder) = &v.holder {
                id("holder", holder)?;
            }
            v.set.check()
        };
        match &self.step {
            RegisterStep::Prepare { ballot: b } | RegisterStep::Accepted { ballot: b } => ballot(b),
            RegisterStep::Promise {
                ballot: b,
                accepted,
                lease_left_ms,
            } => {
                ballot(b)?;
                if let Some((accepted_ballot, v)) = accepted {
                    ballot(accepted_ballot)?;
                    value(v)?;
                }
                if *lease_left_ms > acceptor_lease_ms(MAX_LEASE_MS) {
                    return Err(format!("{lease_left_ms} ms of lease left is out of range"));
                }
                Ok(())
            }
            RegisterStep::Propose {
                ballot: b,
                value: v,
            } => {
                ballot(b)?;
                value(v)
            }
            RegisterStep::Refused {
                ballot: b,
                promised,
                reason,
            } => {
                ballot(b)?;
                if let Some(p) = promised {
                    ballot(p)?;
                }
                if reason.len() > 1_024 {
                    return Err("its reason is longer than 1024 bytes".to_owned());
                }
                Ok(())
            }
        }
    }
}

/// What an acceptor keeps of one register, and stores before it answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SlotState {
    /// The highest ballot promised.
    pub promised: Option<Ballot>,
    /// The highest ballot accepted and its value.
    pub accepted: Option<(Ballot, RegisterValue)>,
}

impl SlotState {
    /// The bytes stored.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(128);
        ciborium::into_writer(self, &mut bytes).expect("a slot is plain data");
        bytes
    }

    /// Reads stored bytes.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        ciborium::from_reader(bytes).ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Slot {
    state: SlotState,
    /// When, by this node's clock, the accepted value was accepted (or restored).
    accepted_at_ms: u64,
}

impl Slot {
    fn lease_left(&self, now_ms: u64) -> u64 {
        match &self.state.accepted {
            Some((_, value)) if value.holder.is_some() => acceptor_lease_ms(value.lease_ms)
                .saturating_sub(now_ms.saturating_sub(self.accepted_at_ms)),
            _ => 0,
        }
    }
}

/// What an acceptor does with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Send this answer at once (nothing changed).
    Reply(RegisterStep),
    /// Store the slot's new state, then send the answer (never before).
    StoreThenReply(SlotState, RegisterStep),
}

/// The acceptor side of every register this node keeps.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub struct Acceptor {
    slots: BTreeMap<(String, u32), Slot>,
}

impl Acceptor {
    /// Slots read back from the store at `now_ms`. Each accepted lease counts as accepted
    /// now: this node cannot know how long it was down, and a longer lease is safe.
    pub fn restore(
        now_ms: u64,
        stored: impl IntoIterator<Item = ((String, u32), SlotState)>,
    ) -> Self {
        let slots = stored
            .into_iter()
            .take(MAX_SLOTS)
            .map(|(key, state)| {
                (
                    key,
                    Slot {
                        state,
                        accepted_at_ms: now_ms,
                    },
                )
            })
            .collect();
        Self { slots }
    }

    /// Slots kept.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no slot is kept.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// What this acceptor holds of a replica's register, and how much of its lease is left.
    pub fn view(&self, now_ms: u64, workload: &str, replica: u32) -> Option<(&SlotState, u64)> {
        let slot = self.slots.get(&(workload.to_owned(), replica))?;
        Some((&slot.state, slot.lease_left(now_ms)))
    }

    /// The replicas of `workload` this acceptor holds a slot of, with the value accepted
    /// there (if any) and how much of its lease is left.
    pub fn views_of<'a>(
        &'a self,
        now_ms: u64,
        workload: &'a str,
    ) -> impl Iterator<Item = (u32, Option<&'a RegisterValue>, u64)> + 'a {
        self.slots
            .range((workload.to_owned(), 0)..=(workload.to_owned(), u32::MAX))
            .map(move |((_, replica), slot)| {
                let value = slot.state.accepted.as_ref().map(|(_, value)| value);
                (*replica, value, slot.lease_left(now_ms))
            })
    }

    /// Drops the slots of `workload` (removed) whose lease is over; returns the replicas
    /// dropped, for the host to delete. A slot with a live lease stays until it ends, so
    /// that nobody can take the replica while its last holder may still run it.
    pub fn forget(&mut self, now_ms: u64, workload: &str) -> Vec<u32> {
        let dropped: Vec<u32> = self
            .slots
            .range((workload.to_owned(), 0)..=(workload.to_owned(), u32::MAX))
            .filter(|(_, slot)| slot.lease_left(now_ms) == 0)
            .map(|((_, replica), _)| *replica)
            .collect();
        for replica in &dropped {
            self.slots.remove(&(workload.to_owned(), *replica));
        }
        dropped
    }

    /// The workloads with a slot here.
    pub fn workloads(&self) -> BTreeSet<&str> {
        self.slots.keys().map(|(w, _)| w.as_str()).collect()
    }

    /// Answers `step` from `from` about `replica` of `workload` (already checked with
    /// [`RegisterMessage::check`]); `None` for steps an acceptor does not take.
    pub fn handle(
        &mut self,
        now_ms: u64,
        from: &str,
        workload: &str,
        replica: u32,
        step: &RegisterStep,
    ) -> Option<Answer> {
        let (ballot, proposal) = match step {
            RegisterStep::Prepare { ballot } => (ballot, None),
            RegisterStep::Propose { ballot, value } => (ballot, Some(value)),
            _ => return None,
        };
        let refuse = |promised: Option<Ballot>, reason: String| {
            Some(Answer::Reply(RegisterStep::Refused {
                ballot: ballot.clone(),
                promised,
                reason,
            }))
        };
        if ballot.node != from {
            return refuse(None, format!("{from} sent a ballot of {}", ballot.node));
        }
        let key = (workload.to_owned(), replica);
        if !self.slots.contains_key(&key) && self.slots.len() >= MAX_SLOTS {
            return refuse(
                None,
                format!("this acceptor keeps {MAX_SLOTS} registers already"),
            );
        }
        let slot = self.slots.entry(key).or_insert(Slot {
            state: SlotState::default(),
            accepted_at_ms: now_ms,
        });
        let promised = slot.state.promised.clone();
        match proposal {
            None => {
                if promised.as_ref().is_some_and(|p| p > ballot) {
                    return refuse(promised, "a higher ballot was promised".to_owned());
                }
                let promise = RegisterStep::Promise {
                    ballot: ballot.clone(),
                    accepted: slot.state.accepted.clone(),
                    lease_left_ms: slot.lease_left(now_ms),
                };
                if promised.as_ref() == Some(ballot) {
                    return Some(Answer::Reply(promise));
                }
                slot.state.promised = Some(ballot.clone());
                Some(Answer::StoreThenReply(slot.state.clone(), promise))
            }
            Some(value) => {
                if promised.as_ref().is_some_and(|p| p > ballot) {
                    return refuse(promised, "a higher ballot was promised".to_owned());
                }
                if let Err(reason) = allowed_change(slot, now_ms, from, value) {
                    return refuse(None, reason);
                }
                slot.state.promised = Some(ballot.clone());
                slot.state.accepted = Some((ballot.clone(), value.clone()));
                slot.accepted_at_ms = now_ms;
                Some(Answer::StoreThenReply(
                    slot.state.clone(),
                    RegisterStep::Accepted {
                        ballot: ballot.clone(),
                    },
                ))
            }
        }
    }
}

/// Whether `from` may replace what `slot` accepted with `value`, by this acceptor's own
/// view: a proposer names only itself as holder, never takes a live lease from another,
/// and never moves an epoch backwards.
fn allowed_change(
    slot: &Slot,
    now_ms: u64,
    from: &str,
    value: &RegisterValue,
) -> Result<(), String> {
    if value.holder.as_deref().is_some_and(|h| h != from) {
        return Err(format!("{from} may not make another node the holder"));
    }
    let Some((_, current)) = &slot.state.accepted else {
        return Ok(());
    };
    allowed_set_change(&current.set, value, from)?;
    if value.epoch < current.epoch {
        return Err(format!(
            "epoch {} is older than the accepted {}",
            value.epoch, current.epoch
        ));
    }
    let lease_left = slot.lease_left(now_ms);
    let other_holder = current.holder.as_deref().filter(|h| *h != from);
    if let Some(holder) = other_holder {
        if lease_left > 0 {
            return Err(format!("{holder} holds the lease for {lease_left} ms more"));
        }
        // An epoch names one holding: a new holder never reuses its predecessor's.
        if value.holder.is_some() && value.epoch == current.epoch {
            return Err(format!("epoch {} was {holder}'s", value.epoch));
        }
    }
    Ok(())
}

/// Whether a value may name `value.set` after one that named `current`: the same set, or
/// a later one proposed by the holder it names (a set changes only through the replica's
/// holder, the one node with a stake in keeping it). A set one generation on must be one
/// step on; an acceptor that was away and missed steps takes a later one as it comes.
fn allowed_set_change(
    current: &AcceptorSet,
    value: &RegisterValue,
    from: &str,
) -> Result<(), String> {
    let next = &value.set;
    if next.matches(current) || (current.is_unnamed() && next.generation == 0) {
        return Ok(());
    }
    if next.generation <= current.generation {
        return Err(format!(
            "the acceptors are at generation {}, not {}",
            current.generation, next.generation
        ));
    }
    if value.holder.as_deref() != Some(from) {
        return Err(format!(
            "{from} may not change the acceptors: only the holder may"
        ));
    }
    if next.generation == current.generation + 1 && !current.is_unnamed() && !current.steps_to(next)
    {
        return Err(format!(
            "generation {} is no single step on from the acceptors at {}",
            next.generation, current.generation
        ));
    }
    Ok(())
}

/// What a proposer wants of a register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Change {
    /// Become the holder at a new epoch, once any other holder's lease is over.
    Acquire,
    /// Stay the holder at this epoch (renew the lease).
    Renew {
        /// The epoch held.
        epoch: u64,
    },
    /// Stop being the holder at this epoch, so the next one need not wait for the lease.
    Release {
        /// The epoch held.
        epoch: u64,
    },
}

/// How a round ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A quorum accepted this value (for a renewal or acquisition: this node holds the
    /// lease from the round's start).
    Committed(RegisterValue),
    /// Another node holds a live lease; it is over in `lease_left_ms` at the latest
    /// unless renewed.
    HeldBy {
        /// The holder.
        holder: String,
        /// Its epoch.
        epoch: u64,
        /// Most of its lease left, by the quorum's clocks.
        lease_left_ms: u64,
    },
    /// A renewal or release found the register no longer this node's at its epoch.
    Lost {
        /// What the register holds instead.
        current: Option<RegisterValue>,
    },
    /// The register is kept by another set of acceptors than the round's: start again
    /// on `set`.
    Moved {
        /// The set the acceptors named.
        set: AcceptorSet,
    },
    /// Refused by too many acceptors to reach a quorum (a higher ballot, or a refusal by
    /// their own view); try again with a ballot above `highest`.
    Refused {
        /// The highest ballot an acceptor had promised.
        highest: Option<Ballot>,
        /// One acceptor's reason.
        reason: String,
    },
}

/// One proposer's round on one register.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Round {
    /// Workload key.
    pub workload: String,
    /// The replica.
    pub replica: u32,
    /// This round's ballot.
    pub ballot: Ballot,
    /// What the round is for.
    pub change: Change,
    /// When the round started, by the proposer's clock: a lease it grants counts from here.
    pub started_ms: u64,
    /// The lease asked for.
    pub lease_ms: u64,
    /// The set the round gathers promises from.
    set: AcceptorSet,
    /// An acceptor to replace, and by whom, if the round may.
    replacement: Option<(String, String)>,
    promises: BTreeMap<String, (Option<(Ballot, RegisterValue)>, u64)>,
    proposed: Option<RegisterValue>,
    accepted: BTreeSet<String>,
    refused: BTreeSet<String>,
    highest_refusal: Option<Ballot>,
    last_reason: String,
}

impl Round {
    /// Starts a round by `node` at ballot round `round` on the register kept by `set`,
    /// and returns it with the prepares to send (one to each acceptor, itself included
    /// when it is one).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        now_ms: u64,
        node: &str,
        workload: &str,
        replica: u32,
        round: u64,
        change: Change,
        set: &AcceptorSet,
        lease_ms: u64,
    ) -> (Self, Vec<(String, RegisterMessage)>) {
        let ballot = Ballot {
            round,
            node: node.to_owned(),
        };
        let this = Self {
            workload: workload.to_owned(),
            replica,
            ballot: ballot.clone(),
            change,
            started_ms: now_ms,
            lease_ms,
            set: set.clone(),
            replacement: None,
            promises: BTreeMap::new(),
            proposed: None,
            accepted: BTreeSet::new(),
            refused: BTreeSet::new(),
            highest_refusal: None,
            last_reason: String::new(),
        };
        let sends = this.to_all(&this.set.members(), RegisterStep::Prepare { ballot });
        (this, sends)
    }

    /// Lets the round replace acceptor `dead` by `with` (it will when it acquires or
    /// renews the lease, on a register not already changing its set).
    pub fn replace(&mut self, dead: &str, with: &str) {
        self.replacement = Some((dead.to_owned(), with.to_owned()));
    }

    /// Whether the round waits for a promise or acceptance from `node`.
    pub fn awaits(&self, node: &str) -> bool {
        self.set.has(node) || self.proposed.as_ref().is_some_and(|v| v.set.has(node))
    }

    /// The set whose quorum the round waits for now.
    fn waiting_on(&self) -> &AcceptorSet {
        self.proposed.as_ref().map_or(&self.set, |v| &v.set)
    }

    fn to_all(&self, to: &[String], step: RegisterStep) -> Vec<(String, RegisterMessage)> {
        to.iter()
            .map(|a| {
                (
                    a.clone(),
                    RegisterMessage {
                        workload: self.workload.clone(),
                        replica: self.replica,
                        step: step.clone(),
                    },
                )
            })
            .collect()
    }

    /// An acceptor's answer. Returns messages to send (the proposals, once a quorum
    /// promised) and, when the round is over, how it ended.
    pub fn handle(
        &mut self,
        from: &str,
        step: &RegisterStep,
    ) -> (Vec<(String, RegisterMessage)>, Option<Outcome>) {
        if !self.awaits(from) {
            return (Vec::new(), None);
        }
        match step {
            RegisterStep::Promise {
                ballot,
                accepted,
                lease_left_ms,
            } if *ballot == self.ballot && self.proposed.is_none() && self.set.has(from) => {
                // An acceptor on a later set: the register moved on (or is moving), and
                // this round's set may have no quorum left at all. Only liveness rides on
                // this; what is safe is decided by the quorum below.
                if let Some((_, value)) = accepted
                    && value.set.generation > self.set.generation
                {
                    return (
                        Vec::new(),
                        Some(Outcome::Moved {
                            set: value.set.clone(),
                        }),
                    );
                }
                self.promises
                    .insert(from.to_owned(), (accepted.clone(), *lease_left_ms));
                if !self.set.is_quorum(|a| self.promises.contains_key(a)) {
                    return (Vec::new(), None);
                }
                match self.next_value() {
                    Ok(value) => {
                        // The old set's members and the new one's: a new acceptor learns
                        // the value from this proposal.
                        let mut to = self.set.members();
                        to.extend(value.set.members().into_iter().filter(|a| !self.set.has(a)));
                        self.proposed = Some(value.clone());
                        // Refusals of the prepare say nothing about the proposal.
                        self.refused.clear();
                        let sends = self.to_all(
                            &to,
                            RegisterStep::Propose {
                                ballot: self.ballot.clone(),
                                value,
                            },
                        );
                        (sends, None)
                    }
                    Err(outcome) => (Vec::new(), Some(outcome)),
                }
            }
            RegisterStep::Accepted { ballot } if *ballot == self.ballot => {
                let Some(value) = &self.proposed else {
                    return (Vec::new(), None);
                };
                self.accepted.insert(from.to_owned());
                // A value is chosen by a quorum of the set it names: a value that changes
                // the set, by majorities of the old and the new.
                if value.set.is_quorum(|a| self.accepted.contains(a)) {
                    return (Vec::new(), Some(Outcome::Committed(value.clone())));
                }
                (Vec::new(), None)
            }
            RegisterStep::Refused {
                ballot,
                promised,
                reason,
            } if *ballot == self.ballot => {
                self.refused.insert(from.to_owned());
                if promised > &self.highest_refusal {
                    self.highest_refusal = promised.clone();
                }
                self.last_reason = reason.clone();
                // The answers still to come cannot make a quorum any more.
                if !self.waiting_on().is_quorum(|a| !self.refused.contains(a)) {
                    return (
                        Vec::new(),
                        Some(Outcome::Refused {
                            highest: self.highest_refusal.clone(),
                            reason: self.last_reason.clone(),
                        }),
                    );
                }
                (Vec::new(), None)
            }
            _ => (Vec::new(), None),
        }
    }

    /// The value to propose, from a quorum's promises, or why there is none.
    fn next_value(&self) -> Result<RegisterValue, Outcome> {
        let highest = self
            .promises
            .values()
            .filter_map(|(accepted, _)| accepted.as_ref())
            .max_by(|a, b| a.0.cmp(&b.0));
        if let Some((_, value)) = highest
            && !value.set.matches(&self.set)
        {
            return Err(Outcome::Moved {
                set: value.set.clone(),
            });
        }
        let current = highest.map(|(_, value)| value.clone());
        // The longest lease any of the quorum reports: the acceptor that accepted the
        // holder's last renewal is among them.
        let lease_left = self
            .promises
            .values()
            .map(|(_, left)| *left)
            .max()
            .unwrap_or(0);
        let me = self.ballot.node.as_str();
        let epoch = current.as_ref().map_or(0, |v| v.epoch);
        let holder = current.as_ref().and_then(|v| v.holder.as_deref());
        let held = |epoch| RegisterValue {
            epoch,
            holder: Some(me.to_owned()),
            lease_ms: self.lease_ms,
            set: self.next_set(highest),
        };
        match self.change {
            Change::Acquire => match holder {
                Some(other) if other != me && lease_left > 0 => Err(Outcome::HeldBy {
                    holder: other.to_owned(),
                    epoch,
                    lease_left_ms: lease_left,
                }),
                _ => Ok(held(epoch + 1)),
            },
            Change::Renew { epoch: held_epoch } => {
                if holder == Some(me) && epoch == held_epoch {
                    Ok(held(epoch))
                } else {
                    Err(Outcome::Lost { current })
                }
            }
            Change::Release { epoch: held_epoch } => {
                if holder == Some(me) && epoch == held_epoch {
                    Ok(RegisterValue {
                        epoch,
                        holder: None,
                        lease_ms: self.lease_ms,
                        set: self.set.clone(),
                    })
                } else {
                    Err(Outcome::Lost { current })
                }
            }
        }
    }

    /// The set a value this round makes its proposer the holder of names: the next step
    /// of a change under way, once its first step is known chosen; the first step of
    /// replacing an acceptor, if the round may; else the set as it is.
    fn next_set(&self, highest: Option<&(Ballot, RegisterValue)>) -> AcceptorSet {
        if let Some(settled) = self.set.settled() {
            // Known chosen when a quorum of this round's promises accepted it: only then
            // may a quorum of the new set alone decide. Before, proposing it again at this
            // round's ballot gets it chosen.
            let chosen = highest.is_some_and(|h| {
                self.set.is_quorum(|a| {
                    self.promises
                        .get(a)
                        .is_some_and(|(accepted, _)| accepted.as_ref() == Some(h))
                })
            });
            return if chosen { settled } else { self.set.clone() };
        }
        self.replacement
            .as_ref()
            .and_then(|(dead, with)| self.set.replacing(dead, with))
            .unwrap_or_else(|| self.set.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one round to its end against `acceptors` (delivering everything, in order),
    /// as `node` at `now_ms`.
    fn run_round(
        acceptors: &mut BTreeMap<String, Acceptor>,
        now_ms: u64,
        node: &str,
        round: u64,
        change: Change,
    ) -> Outcome {
        let names: Vec<String> = acceptors.keys().cloned().collect();
        let (mut r, mut sends) = Round::start(
            now_ms,
            node,
            "default/db",
            0,
            round,
            change,
            &AcceptorSet::first(names),
            6_000,
        );
        while let Some((to, message)) = sends.pop() {
            let acceptor = acceptors.get_mut(&to).expect("an acceptor");
            let answer = acceptor
                .handle(
                    now_ms,
                    node,
                    &message.workload,
                    message.replica,
                    &message.step,
                )
                .expect("an acceptor's step");
            let step = match answer {
                Answer::Reply(step) | Answer::StoreThenReply(_, step) => step,
            };
            let (more, outcome) = r.handle(&to, &step);
            if let Some(outcome) = outcome {
                return outcome;
            }
            sends.extend(more);
        }
        panic!("the round did not end");
    }

    fn three() -> BTreeMap<String, Acceptor> {
        ["a", "b", "c"]
            .into_iter()
            .map(|n| (n.to_owned(), Acceptor::default()))
            .collect()
    }

    /// The worst pair of clocks the design allows for, a holder 1 % slow and an acceptor
    /// 1 % fast, still leaves the whole margin, in real time, between the end of the
    /// holder's lease and the moment an acceptor reports it over: for every stop timeout.
    /// With a smaller drift allowance the holder's lease would reach into the margin.
    #[test]
    fn the_slowest_holder_and_the_fastest_acceptor_keep_the_margin_between_leases() {
        // The real time, in µs, that `local_ms` of a clock running at `rate` ‰ takes.
        let real_us = |local_ms: u64, rate: u64| local_ms * 1_000_000 / rate;
        let margin_us = real_us(LEASE_MARGIN_MS, 1_010);
        for stop_timeout in 0..=crate::workload::MAX_STOP_TIMEOUT_SECS {
            let lease = lease_ms(stop_timeout);
            // The holder starts its round at real time 0; no acceptor accepts before it.
            let holder_ends = real_us(holder_valid_until(0, lease), 990);
            let acceptor_ends = real_us(acceptor_lease_ms(lease), 1_010);
            assert!(
                acceptor_ends >= holder_ends + margin_us,
                "stop timeout {stop_timeout} s: the holder's lease ends at {holder_ends} µs, \
                 an acceptor's at {acceptor_ends} µs, less than {margin_us} µs apart"
            );
        }
    }

    #[test]
    fn the_first_holder_gets_epoch_one_and_renews_at_it() {
        let mut acceptors = three();
        let Outcome::Committed(value) = run_round(&mut acceptors, 0, "x", 1, Change::Acquire)
        else {
            panic!("not committed");
        };
        assert_eq!((value.epoch, value.holder.as_deref()), (1, Some("x")));
        let renewed = run_round(&mut acceptors, 1_000, "x", 2, Change::Renew { epoch: 1 });
        assert_eq!(renewed, Outcome::Committed(value));
    }

    #[test]
    fn another_node_waits_out_the_lease_then_takes_the_next_epoch() {
        let mut acceptors = three();
        run_round(&mut acceptors, 0, "x", 1, Change::Acquire);
        let held = run_round(&mut acceptors, 3_000, "y", 2, Change::Acquire);
        let Outcome::HeldBy {
            holder,
            epoch,
            lease_left_ms,
        } = held
        else {
            panic!("{held:?}");
        };
        assert_eq!((holder.as_str(), epoch), ("x", 1));
        assert_eq!(lease_left_ms, acceptor_lease_ms(6_000) - 3_000);
        let later = 3_000 + lease_left_ms;
        let Outcome::Committed(value) = run_round(&mut acceptors, later, "y", 3, Change::Acquire)
        else {
            panic!("not committed");
        };
        assert_eq!((value.epoch, value.holder.as_deref()), (2, Some("y")));
        // The old holder's renewal now finds the replica lost.
        let lost = run_round(&mut acceptors, later, "x", 4, Change::Renew { epoch: 1 });
        assert!(matches!(lost, Outcome::Lost { .. }), "{lost:?}");
    }

    #[test]
    fn a_release_lets_the_next_holder_start_at_once() {
        let mut acceptors = three();
        run_round(&mut acceptors, 0, "x", 1, Change::Acquire);
        run_round(&mut acceptors, 100, "x", 2, Change::Release { epoch: 1 });
        let taken = run_round(&mut acceptors, 200, "y", 3, Change::Acquire);
        assert!(
            matches!(taken, Outcome::Committed(ref v) if v.epoch == 2),
            "{taken:?}"
        );
    }

    #[test]
    fn a_lower_ballot_is_refused_with_the_one_promised() {
        let mut acceptors = three();
        run_round(&mut acceptors, 0, "x", 5, Change::Acquire);
        let refused = run_round(&mut acceptors, 100, "y", 3, Change::Acquire);
        let Outcome::Refused { highest, .. } = refused else {
            panic!("{refused:?}");
        };
        assert_eq!(highest.map(|b| b.round), Some(5));
    }

    #[test]
    fn an_acceptor_refuses_a_proposal_that_seizes_a_live_lease() {
        let mut acceptor = Acceptor::default();
        let propose = |node: &str, round, epoch| RegisterStep::Propose {
            ballot: Ballot {
                round,
                node: node.to_owned(),
            },
            value: RegisterValue {
                epoch,
                holder: Some(node.to_owned()),
                lease_ms: 6_000,
                set: AcceptorSet::default(),
            },
        };
        let taken = acceptor.handle(0, "x", "default/db", 0, &propose("x", 1, 1));
        assert!(matches!(taken, Some(Answer::StoreThenReply(..))));
        // A hostile proposer skips phase 1 and claims the replica with a higher ballot.
        let seized = acceptor.handle(10, "y", "default/db", 0, &propose("y", 9, 2));
        let Some(Answer::Reply(RegisterStep::Refused { reason, .. })) = seized else {
            panic!("{seized:?}");
        };
        assert!(reason.contains("holds the lease"), "{reason}");
        // Or names another node the holder, or uses another's ballot.
        let mut other = propose("y", 10, 2);
        if let RegisterStep::Propose { value, .. } = &mut other {
            value.holder = Some("z".to_owned());
        }
        assert!(matches!(
            acceptor.handle(20, "y", "default/db", 0, &other),
            Some(Answer::Reply(RegisterStep::Refused { .. }))
        ));
        assert!(matches!(
            acceptor.handle(20, "y", "default/db", 0, &propose("x", 11, 1)),
            Some(Answer::Reply(RegisterStep::Refused { .. }))
        ));
    }

    #[test]
    fn a_restored_acceptor_counts_the_lease_from_its_restart() {
        let mut acceptor = Acceptor::default();
        let step = proposal("x", 1, Some("x"), AcceptorSet::default());
        let Some(Answer::StoreThenReply(stored, _)) =
            acceptor.handle(0, "x", "default/db", 0, &step)
        else {
            panic!("not stored");
        };
        let stored = SlotState::decode(&stored.encode()).expect("round-trips");
        let restored = Acceptor::restore(50_000, [(("default/db".to_owned(), 0), stored)]);
        let (_, left) = restored.view(50_000, "default/db", 0).expect("a slot");
        assert_eq!(left, acceptor_lease_ms(6_000));
    }

    #[test]
    fn a_removed_workloads_slots_go_only_once_their_lease_is_over() {
        let mut acceptors = three();
        run_round(&mut acceptors, 0, "x", 1, Change::Acquire);
        let c = acceptors.get_mut("c").expect("c");
        assert!(c.forget(1_000, "default/db").is_empty());
        assert_eq!(c.forget(acceptor_lease_ms(6_000), "default/db"), vec![0]);
        assert!(c.is_empty());
    }

    #[test]
    fn messages_with_numbers_out_of_range_are_refused_before_use() {
        let message = |step| RegisterMessage {
            workload: "default/db".to_owned(),
            replica: 0,
            step,
        };
        let huge = RegisterStep::Propose {
            ballot: Ballot {
                round: u64::MAX,
                node: "x".to_owned(),
            },
            value: RegisterValue {
                epoch: 1,
                holder: None,
                lease_ms: 1,
                set: AcceptorSet::default(),
            },
        };
        assert!(message(huge).check().is_err());
        let long_lease = RegisterStep::Propose {
            ballot: Ballot {
                round: 1,
                node: "x".to_owned(),
            },
            value: RegisterValue {
                epoch: 1,
                holder: None,
                lease_ms: MAX_LEASE_MS + 1,
                set: AcceptorSet::default(),
            },
        };
        assert!(message(long_lease).check().is_err());
        let fine = RegisterStep::Prepare {
            ballot: Ballot {
                round: 1,
                node: "x".to_owned(),
            },
        };
        assert!(message(fine).check().is_ok());
        assert!(
            RegisterMessage {
                workload: String::new(),
                replica: 0,
                step: RegisterStep::Accepted {
                    ballot: Ballot {
                        round: 1,
                        node: "x".to_owned()
                    }
                }
            }
            .check()
            .is_err()
        );
    }

    /// Runs a round of `node` on `set` to its end, as [`run_round`] does, with the
    /// acceptors in `down` answering nothing, letting the round replace an acceptor.
    #[allow(clippy::too_many_arguments)]
    fn run_on(
        acceptors: &mut BTreeMap<String, Acceptor>,
        down: &[&str],
        now_ms: u64,
        node: &str,
        round: u64,
        change: Change,
        set: &AcceptorSet,
        replace: Option<(&str, &str)>,
    ) -> Option<Outcome> {
        let (mut r, mut sends) =
            Round::start(now_ms, node, "default/db", 0, round, change, set, 6_000);
        if let Some((dead, with)) = replace {
            r.replace(dead, with);
        }
        while let Some((to, message)) = sends.pop() {
            if down.contains(&to.as_str()) {
                continue;
            }
            let acceptor = acceptors.entry(to.clone()).or_default();
            let Some(Answer::Reply(step) | Answer::StoreThenReply(_, step)) = acceptor.handle(
                now_ms,
                node,
                &message.workload,
                message.replica,
                &message.step,
            ) else {
                panic!("no answer");
            };
            let (more, outcome) = r.handle(&to, &step);
            if outcome.is_some() {
                return outcome;
            }
            sends.extend(more);
        }
        None
    }

    /// A phase-2 message of `node` at ballot `round`: epoch 1, held by `holder`, on `set`.
    fn proposal(node: &str, round: u64, holder: Option<&str>, set: AcceptorSet) -> RegisterStep {
        RegisterStep::Propose {
            ballot: Ballot {
                round,
                node: node.to_owned(),
            },
            value: RegisterValue {
                epoch: 1,
                holder: holder.map(str::to_owned),
                lease_ms: 6_000,
                set,
            },
        }
    }

    fn set_of(generation: u64, acceptors: &[&str], leaving: Option<&[&str]>) -> AcceptorSet {
        let names = |n: &[&str]| n.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
        AcceptorSet {
            generation,
            acceptors: names(acceptors),
            leaving: leaving.map(names),
        }
    }

    #[test]
    fn a_gone_acceptor_is_replaced_in_two_steps_and_the_new_set_keeps_the_register() {
        let mut acceptors = three();
        let first = set_of(0, &["a", "b", "c"], None);
        let got = run_on(
            &mut acceptors,
            &[],
            0,
            "x",
            1,
            Change::Acquire,
            &first,
            None,
        );
        assert!(
            matches!(got, Some(Outcome::Committed(ref v)) if v.set == first),
            "{got:?}"
        );
        // c is gone: the renewal names both sets, and d learns the value.
        let renew = Change::Renew { epoch: 1 };
        let got = run_on(
            &mut acceptors,
            &["c"],
            1_000,
            "x",
            2,
            renew,
            &first,
            Some(("c", "d")),
        );
        let joint = set_of(1, &["a", "b", "d"], Some(&["a", "b", "c"]));
        assert!(
            matches!(got, Some(Outcome::Committed(ref v)) if v.set == joint),
            "{got:?}"
        );
        assert!(
            acceptors["d"]
                .view(1_000, "default/db", 0)
                .is_some_and(|(s, _)| s.accepted.is_some())
        );
        // Known chosen, the next renewal leaves the old set behind.
        let got = run_on(
            &mut acceptors,
            &["c"],
            2_000,
            "x",
            3,
            renew,
            &joint,
            Some(("c", "d")),
        );
        let new = set_of(2, &["a", "b", "d"], None);
        assert!(
            matches!(got, Some(Outcome::Committed(ref v)) if v.set == new),
            "{got:?}"
        );
        // Now a and d are a quorum, without b or c.
        let got = run_on(
            &mut acceptors,
            &["b", "c"],
            3_000,
            "x",
            4,
            renew,
            &new,
            None,
        );
        assert!(
            matches!(got, Some(Outcome::Committed(ref v)) if v.epoch == 1),
            "{got:?}"
        );
        // A proposer that knows only the first set (c back, with its old value) is sent on
        // to the new one, and finds the lease held there.
        let got = run_on(
            &mut acceptors,
            &[],
            3_100,
            "y",
            5,
            Change::Acquire,
            &first,
            None,
        );
        assert_eq!(got, Some(Outcome::Moved { set: new.clone() }));
        let got = run_on(
            &mut acceptors,
            &["b"],
            3_100,
            "y",
            6,
            Change::Acquire,
            &new,
            None,
        );
        assert!(
            matches!(got, Some(Outcome::HeldBy { ref holder, .. }) if holder == "x"),
            "{got:?}"
        );
    }

    #[test]
    fn the_new_set_alone_decides_only_once_both_sets_are_known_to_have_chosen() {
        let mut acceptors = three();
        let first = set_of(0, &["a", "b", "c"], None);
        run_on(
            &mut acceptors,
            &[],
            0,
            "x",
            1,
            Change::Acquire,
            &first,
            None,
        );
        // The joint value reaches b alone (after a quorum's promises) before x stops: it
        // is not chosen.
        let joint = set_of(1, &["a", "b", "d"], Some(&["a", "b", "c"]));
        let renew = Change::Renew { epoch: 1 };
        let joint_by_x = proposal("x", 2, Some("x"), joint.clone());
        let b = acceptors.get_mut("b").expect("b");
        assert!(matches!(
            b.handle(500, "x", "default/db", 0, &joint_by_x),
            Some(Answer::StoreThenReply(..))
        ));
        // x's next round, on the joint set, hears a (old value) and b (joint value): not a
        // quorum of both sets that accepted it, so it proposes the joint value again
        // rather than the new set alone.
        let got = run_on(
            &mut acceptors,
            &["d"],
            1_000,
            "x",
            3,
            renew,
            &joint,
            Some(("c", "d")),
        );
        assert!(
            matches!(got, Some(Outcome::Committed(ref v)) if v.set == joint),
            "{got:?}"
        );
    }

    #[test]
    fn acceptors_refuse_set_changes_that_are_not_one_step_by_the_holder() {
        let refused = |answer: Option<Answer>| match answer {
            Some(Answer::Reply(RegisterStep::Refused { reason, .. })) => reason,
            other => panic!("accepted: {other:?}"),
        };
        let first = set_of(0, &["a", "b", "c"], None);
        let mut acceptor = Acceptor::default();
        acceptor.handle(0, "x", "default/db", 0, &proposal("x", 1, Some("x"), first));
        // Two acceptors swapped at once: old and new majorities could miss each other.
        let two = set_of(1, &["a", "d", "e"], Some(&["a", "b", "c"]));
        let reason =
            refused(acceptor.handle(10, "x", "default/db", 0, &proposal("x", 2, Some("x"), two)));
        assert!(reason.contains("no single step"), "{reason}");
        // Straight to the new set alone, skipping the joint step.
        let skip = set_of(1, &["a", "b", "d"], None);
        let reason =
            refused(acceptor.handle(10, "x", "default/db", 0, &proposal("x", 3, Some("x"), skip)));
        assert!(reason.contains("no single step"), "{reason}");
        // A release that changes the set: only a holder changes it.
        let joint = set_of(1, &["a", "b", "d"], Some(&["a", "b", "c"]));
        let reason = refused(acceptor.handle(
            10,
            "x",
            "default/db",
            0,
            &proposal("x", 4, None, joint.clone()),
        ));
        assert!(reason.contains("only the holder"), "{reason}");
        // The one step, by the holder, is taken; then no way back.
        assert!(matches!(
            acceptor.handle(
                10,
                "x",
                "default/db",
                0,
                &proposal("x", 5, Some("x"), joint)
            ),
            Some(Answer::StoreThenReply(..))
        ));
        let back = set_of(0, &["a", "b", "c"], None);
        let reason =
            refused(acceptor.handle(20, "x", "default/db", 0, &proposal("x", 6, Some("x"), back)));
        assert!(reason.contains("generation 1, not 0"), "{reason}");
    }

    #[test]
    fn values_of_registers_that_named_no_set_are_taken_as_the_first_set() {
        let mut acceptors = three();
        // An older node wrote a value naming no set.
        let unnamed = proposal("x", 1, Some("x"), AcceptorSet::default());
        for acceptor in acceptors.values_mut() {
            acceptor.handle(0, "x", "default/db", 0, &unnamed);
        }
        let first = set_of(0, &["a", "b", "c"], None);
        let got = run_on(
            &mut acceptors,
            &[],
            500,
            "x",
            2,
            Change::Renew { epoch: 1 },
            &first,
            None,
        );
        assert!(
            matches!(got, Some(Outcome::Committed(ref v)) if v.set == first),
            "{got:?}"
        );
    }

    #[test]
    fn quorums() {
        let joint = set_of(1, &["a", "b", "d"], Some(&["a", "b", "c"]));
        assert!(joint.is_quorum(|a| a == "a" || a == "b"));
        assert!(!joint.is_quorum(|a| a == "a" || a == "d"));
        assert!(joint.is_quorum(|a| a != "b"));
        assert_eq!([1, 2, 3, 4, 5].map(quorum), [1, 2, 2, 3, 3]);
    }
}
