//! The negotiator's half of strong workloads: this node as an acceptor of lease registers
//! ([`crate::register`]), and as the holder of the leases of strong replicas it was
//! awarded ([`crate::lease`]).
//!
//! An award of a strong replica is stored like any other, but its container does not
//! start on the award: the node first acquires the replica's lease from a quorum of the
//! acceptors named in the workload's record, and runs it only while it holds the lease
//! ([`HostAction::RunLeased`], [`HostAction::Fence`]). The owner's auctions stay as they
//! are: an owner that places a replica again while the old node may still run it (a
//! partition) gets a second node waiting for the lease, not a second container.

use super::*;
use crate::register::{Acceptor, Answer, RegisterMessage, RegisterStep, SlotState};

/// What one node knows of a strong replica's lease (for `explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseView {
    /// This node holds the lease: it may run the replica for `left_ms` more, by its
    /// own clock, less its stop timeout.
    Held {
        /// The lease's epoch: the fencing token the container carries.
        epoch: u64,
        /// How long the lease lasts without a renewal.
        left_ms: u64,
        /// The register's acceptors, as this node last learned them.
        acceptors: Vec<String>,
    },
    /// This node was awarded the replica and seeks its lease; it runs nothing until it
    /// holds it.
    Seeking {
        /// Why it does not hold it: another holder's lease, no quorum of acceptors, …
        why: String,
        /// The acceptors it asks.
        acceptors: Vec<String>,
    },
    /// This node is one of the register's acceptors and accepted this value.
    Accepted {
        /// Who holds the lease (none: released).
        holder: Option<String>,
        /// Its epoch.
        epoch: u64,
        /// How long before this acceptor takes the lease to be over.
        left_ms: u64,
        /// The acceptors the value names (none: written by an older version).
        acceptors: Vec<String>,
    },
}

impl Negotiator {
    /// This node's acceptor state (for invariants and `explain`).
    pub fn acceptor(&self) -> &Acceptor {
        &self.acceptor
    }

    /// The leases this node holds or seeks.
    pub fn claims(&self) -> &crate::lease::Claims {
        &self.claims
    }

    /// What this node knows of the leases of `workload`'s replicas, for `explain`: the
    /// claims it holds or seeks, else the values it accepted as an acceptor.
    pub fn lease_views(&self, now_ms: u64, workload: &str) -> BTreeMap<u32, LeaseView> {
        let mut views: BTreeMap<u32, LeaseView> = self
            .acceptor
            .views_of(now_ms, workload)
            .filter_map(|(replica, value, left_ms)| {
                let value = value?;
                Some((
                    replica,
                    LeaseView::Accepted {
                        holder: value.holder.clone(),
                        epoch: value.epoch,
                        left_ms,
                        acceptors: value.set.acceptors.clone(),
                    },
                ))
            })
            .collect();
        for ((_, replica), claim) in self.claims.iter().filter(|((w, _), _)| w == workload) {
            let view = match &claim.state {
                crate::lease::ClaimState::Held {
                    epoch,
                    valid_until_ms,
                    ..
                } => LeaseView::Held {
                    epoch: *epoch,
                    left_ms: valid_until_ms.saturating_sub(now_ms),
                    acceptors: claim.set.acceptors.clone(),
                },
                crate::lease::ClaimState::Seeking { why } => LeaseView::Seeking {
                    why: why.clone(),
                    acceptors: claim.set.acceptors.clone(),
                },
            };
            views.insert(*replica, view);
        }
        views
    }

    /// Takes back the register slots the host stored before a restart. Each lease they
    /// hold counts from now: nobody can know how long this node was away.
    pub fn restore_registers(&mut self, now_ms: u64, stored: Vec<((String, u32), SlotState)>) {
        self.acceptor = Acceptor::restore(now_ms, stored);
    }

    /// The host's answer to [`HostAction::StoreRegister`]: on `Ok` the promise or
    /// acceptance held leaves; on `Err` it is dropped (the proposer's round times out,
    /// and this node's memory is ahead of its store only in what it promised more).
    pub fn handle_register_stored(
        &mut self,
        now_ms: u64,
        token: u64,
        result: Result<(), HostError>,
    ) {
        if let Some((to, message)) = self.register_replies.remove(&token)
            && result.is_ok()
        {
            self.send(to, Body::Register(message));
        }
        self.settle(now_ms);
    }

    /// A register message from `from`, past the gate.
    pub(super) fn receive_register(&mut self, now_ms: u64, from: &str, message: RegisterMessage) {
        if let Err(reason) = message.check() {
            self.events.push_back(Event::RegisterRefused {
                from: from.to_owned(),
                reason,
            });
            return;
        }
        match &message.step {
            RegisterStep::Prepare { ballot } | RegisterStep::Propose { ballot, .. }
                if !self.strong_enabled =>
            {
                let refused = RegisterMessage {
                    workload: message.workload.clone(),
                    replica: message.replica,
                    step: RegisterStep::Refused {
                        ballot: ballot.clone(),
                        promised: None,
                        reason: format!("{} keeps no lease registers", self.id),
                    },
                };
                self.send(from.to_owned(), Body::Register(refused));
            }
            RegisterStep::Prepare { .. } | RegisterStep::Propose { .. } => {
                let answer = self.acceptor.handle(
                    now_ms,
                    from,
                    &message.workload,
                    message.replica,
                    &message.step,
                );
                let reply = |step| RegisterMessage {
                    workload: message.workload.clone(),
                    replica: message.replica,
                    step,
                };
                match answer {
                    Some(Answer::Reply(step)) => {
                        self.send(from.to_owned(), Body::Register(reply(step)));
                    }
                    Some(Answer::StoreThenReply(slot, step)) => {
                        let token = self.token();
                        self.register_replies
                            .insert(token, (from.to_owned(), reply(step)));
                        self.actions.push_back(HostAction::StoreRegister {
                            token,
                            workload: message.workload.clone(),
                            replica: message.replica,
                            slot,
                        });
                    }
                    None => {}
                }
            }
            _ => self.claims.handle(now_ms, from, &message),
        }
    }

    /// Claims the lease of every strong replica this node holds once its record names
    /// the acceptors, and gives up the claims of replicas no longer held here.
    pub(super) fn follow_claims(&mut self, now_ms: u64) {
        if self.strong.is_empty() && self.claims.iter().next().is_none() {
            return;
        }
        let held: std::collections::HashSet<(String, u32)> = self
            .bidder
            .committed()
            .map(|c| (c.workload.clone(), c.replica))
            .collect();
        self.strong.retain(|key, _| held.contains(key));
        let gone: Vec<(String, u32)> = self
            .claims
            .iter()
            .map(|(key, _)| key.clone())
            .filter(|key| !self.strong.contains_key(key))
            .collect();
        for (workload, replica) in gone {
            self.claims
                .drop_claim(&workload, replica, "the replica is no longer held here");
        }
        let wanted: Vec<((String, u32), u32)> = self
            .strong
            .iter()
            .filter(|(key, _)| self.claims.get(&key.0, key.1).is_none())
            .map(|(key, stop)| (key.clone(), *stop))
            .collect();
        for ((workload, replica), stop_timeout_secs) in wanted {
            let Some(held) = self.records.get(&workload) else {
                continue;
            };
            if held.record.acceptors.is_empty() {
                continue;
            }
            let acceptors = held.record.acceptors.clone();
            self.claims
                .claim(now_ms, &workload, replica, acceptors, stop_timeout_secs);
        }
        self.plan_replacements();
    }

    /// Tells each claim which acceptor of its register to replace, if one is gone: dead
    /// by this node's membership, or no longer known to it. The replacement is the first
    /// live member, in the order acceptors are chosen in, that the set does not name.
    /// Replacing a member that was only cut off is safe (the change is a register round
    /// like any other), merely a change it did not need.
    fn plan_replacements(&mut self) {
        /// A replica's claim, and the acceptor it should replace, by whom.
        type Plan = ((String, u32), Option<(String, String)>);
        let plans: Vec<Plan> = self
            .claims
            .iter()
            .filter_map(|((workload, replica), claim)| {
                let gone = claim.set.acceptors.iter().find(|a| {
                    **a != self.id
                        && self
                            .membership
                            .member(a)
                            .is_none_or(|m| m.state == crate::messages::MemberState::Dead)
                });
                // This runs on every input: the plan made stays while it still holds,
                // rather than ranking every member again.
                let kept = claim.replacement.as_ref().is_some_and(|(dead, with)| {
                    Some(dead) == gone && !claim.set.has(with) && self.keeps_registers(with)
                });
                if kept || (gone.is_none() && claim.replacement.is_none()) {
                    return None;
                }
                let plan = gone.and_then(|gone| {
                    self.acceptor_candidates(workload)
                        .into_iter()
                        .find(|m| !claim.set.has(m))
                        .map(|with| (gone.clone(), with))
                });
                (claim.replacement != plan).then(|| ((workload.clone(), *replica), plan))
            })
            .collect();
        for ((workload, replica), plan) in plans {
            self.claims.replace_acceptor(&workload, replica, plan);
        }
    }

    /// Turns what the claims decided into host actions, events and messages.
    pub(super) fn lease_outputs(&mut self) {
        while let Some(event) = self.claims.poll_event() {
            match event {
                crate::lease::LeaseEvent::Run {
                    workload,
                    replica,
                    epoch,
                    fence_at_ms,
                } => self.actions.push_back(HostAction::RunLeased {
                    workload,
                    replica,
                    epoch,
                    fence_at_ms,
                }),
                crate::lease::LeaseEvent::Fence {
                    workload,
                    replica,
                    epoch,
                    why,
                } => self.actions.push_back(HostAction::Fence {
                    workload,
                    replica,
                    epoch,
                    why,
                }),
                crate::lease::LeaseEvent::AcceptorsChanged {
                    workload,
                    replica,
                    set,
                } => self.events.push_back(Event::AcceptorsChanged {
                    workload,
                    replica,
                    set,
                }),
                crate::lease::LeaseEvent::Waiting {
                    workload,
                    replica,
                    holder,
                    epoch,
                    lease_left_ms,
                } => self.events.push_back(Event::LeaseWaiting {
                    workload,
                    replica,
                    holder,
                    epoch,
                    lease_left_ms,
                }),
            }
        }
        while let Some((to, message)) = self.claims.poll_transmit() {
            self.send(to, Body::Register(message));
        }
    }

    /// Drops the register slots of removed workloads whose leases are over.
    pub(super) fn forget_registers(&mut self, now_ms: u64) {
        let removed: Vec<String> = self
            .acceptor
            .workloads()
            .into_iter()
            .filter(|w| self.removed_by_record(w))
            .map(str::to_owned)
            .collect();
        for workload in removed {
            for replica in self.acceptor.forget(now_ms, &workload) {
                self.actions.push_back(HostAction::DropRegister {
                    workload: workload.clone(),
                    replica,
                });
            }
        }
    }
}
