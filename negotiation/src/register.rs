//! The lease register of one replica of a strong workload, and the consensus round that
//! changes it.
//!
//! Each replica of a `strong` workload has a register `{epoch, holder, lease}` kept by a
//! few acceptor nodes (three, or every member when there are fewer). It changes only by a
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
//! Clocks that run within ±1 % of real time ([`DRIFT_PER_MILLE`] allows for 2 %) can
//! then never let two holders' leases overlap in real time. Acceptors also refuse,
//! from their own view, a value that takes a live lease from its holder, so a proposer
//! that ignores promises (a hostile member) still cannot seize a replica.
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
/// timeout (10 s) under 15 s. A holder fences about 2.7 s after the start of its last
/// renewal that succeeded, so it has two tries (each up to [`ROUND_TIMEOUT_MS`]) before it
/// stops its container. It was 5 s with renewals every 1.5 s: a third fewer messages, and
/// failovers of 15.7 s (BENCHMARKS.md).
pub const LEASE_RUN_MS: u64 = 4_000;

/// How far apart in rate, per mille, the clocks of a holder and an acceptor may run: the
/// holder treats its lease as this much shorter, the acceptor as this much longer.
/// Clocks within ±1 % of real time differ by at most 2 %.
pub const DRIFT_PER_MILLE: u64 = 20;

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

/// The register of one replica.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RegisterValue {
    /// The fencing token: grows by one each time the replica gets a holder.
    pub epoch: u64,
    /// The node that may run the replica while its lease lasts (`None`: nobody).
    pub holder: Option<String>,
    /// How long each grant or renewal of the lease lasts.
    pub lease_ms: u64,
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
            Ok(())
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
    acceptors: Vec<String>,
    promises: BTreeMap<String, (Option<(Ballot, RegisterValue)>, u64)>,
    proposed: Option<RegisterValue>,
    accepted: BTreeSet<String>,
    refused: BTreeSet<String>,
    highest_refusal: Option<Ballot>,
    last_reason: String,
}

impl Round {
    /// Starts a round by `node` at ballot round `round` and returns it with the prepares
    /// to send (one to each acceptor, itself included when it is one).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        now_ms: u64,
        node: &str,
        workload: &str,
        replica: u32,
        round: u64,
        change: Change,
        acceptors: &[String],
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
            acceptors: acceptors.to_vec(),
            promises: BTreeMap::new(),
            proposed: None,
            accepted: BTreeSet::new(),
            refused: BTreeSet::new(),
            highest_refusal: None,
            last_reason: String::new(),
        };
        let sends = this.to_all(RegisterStep::Prepare { ballot });
        (this, sends)
    }

    /// Whether the round waits for a promise or acceptance from `node`.
    pub fn awaits(&self, node: &str) -> bool {
        self.acceptors.iter().any(|a| a == node)
    }

    fn to_all(&self, step: RegisterStep) -> Vec<(String, RegisterMessage)> {
        self.acceptors
            .iter()
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
        let quorum = quorum(self.acceptors.len());
        match step {
            RegisterStep::Promise {
                ballot,
                accepted,
                lease_left_ms,
            } if *ballot == self.ballot && self.proposed.is_none() => {
                self.promises
                    .insert(from.to_owned(), (accepted.clone(), *lease_left_ms));
                if self.promises.len() < quorum {
                    return (Vec::new(), None);
                }
                match self.next_value() {
                    Ok(value) => {
                        self.proposed = Some(value.clone());
                        // Refusals of the prepare say nothing about the proposal.
                        self.refused.clear();
                        let sends = self.to_all(RegisterStep::Propose {
                            ballot: self.ballot.clone(),
                            value,
                        });
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
                if self.accepted.len() >= quorum {
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
                if self.acceptors.len() - self.refused.len() < quorum {
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
        let current = self
            .promises
            .values()
            .filter_map(|(accepted, _)| accepted.as_ref())
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, value)| value.clone());
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
        match self.change {
            Change::Acquire => match holder {
                Some(other) if other != me && lease_left > 0 => Err(Outcome::HeldBy {
                    holder: other.to_owned(),
                    epoch,
                    lease_left_ms: lease_left,
                }),
                _ => Ok(RegisterValue {
                    epoch: epoch + 1,
                    holder: Some(me.to_owned()),
                    lease_ms: self.lease_ms,
                }),
            },
            Change::Renew { epoch: held } => {
                if holder == Some(me) && epoch == held {
                    Ok(RegisterValue {
                        epoch,
                        holder: Some(me.to_owned()),
                        lease_ms: self.lease_ms,
                    })
                } else {
                    Err(Outcome::Lost { current })
                }
            }
            Change::Release { epoch: held } => {
                if holder == Some(me) && epoch == held {
                    Ok(RegisterValue {
                        epoch,
                        holder: None,
                        lease_ms: self.lease_ms,
                    })
                } else {
                    Err(Outcome::Lost { current })
                }
            }
        }
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
        let (mut r, mut sends) =
            Round::start(now_ms, node, "default/db", 0, round, change, &names, 6_000);
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
        let step = RegisterStep::Propose {
            ballot: Ballot {
                round: 1,
                node: "x".to_owned(),
            },
            value: RegisterValue {
                epoch: 1,
                holder: Some("x".to_owned()),
                lease_ms: 6_000,
            },
        };
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

    #[test]
    fn quorums() {
        assert_eq!([1, 2, 3, 4, 5].map(quorum), [1, 2, 2, 3, 3]);
    }
}
