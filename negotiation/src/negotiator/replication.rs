//! The negotiator's half of the replicated workload records ([`crate::records`]): writing
//! a record for a submission or a removal, checking and taking records from peers, the
//! anti-entropy rounds, and what a newer record changes here: a successor learns a
//! workload even when none of its replicas was placed, a removal stops the workload
//! wherever its owner or its replicas are, and an owner back from away adopts the newest
//! generation instead of its own.

use super::*;
use crate::messages::{RecordDigest, RecordVersions, Records, WorkloadRecord};
use crate::records::{self, Held, SYNC_INTERVAL_MS, chunk_records, version_of};
use crate::register::DEFAULT_ACCEPTORS;
use crate::workload::Consistency;
use sha2::{Digest, Sha256};

/// Records from one message checked at most: each costs a signature verification.
const MAX_RECORDS_PER_MESSAGE: usize = 256;

impl Negotiator {
    /// The workload records this node holds (for the agent's views and invariants).
    pub fn records(&self) -> &records::RecordTable {
        &self.records
    }

    /// Takes back the records the host stored before a restart, checked like a peer's
    /// (a record whose signature no longer verifies is dropped, with an event).
    pub fn restore_records(&mut self, now_ms: u64, stored: Vec<SignedStatement>) {
        for signed in stored {
            if let Err(reason) = self.offer_record(now_ms, signed, false) {
                self.events.push_back(Event::RecordRefused {
                    from: self.id.clone(),
                    reason: format!("a stored record: {reason}"),
                });
            }
        }
        self.settle(now_ms);
    }

    /// The acceptors of a strong workload's lease registers: those its newest record
    /// names, or, for a new workload, [`DEFAULT_ACCEPTORS`] of the live members that keep
    /// lease registers (this node included, if it does), the same ones whichever node
    /// chooses: those whose hash with the workload's key ranks first (rendezvous hashing,
    /// so a member joining or leaving moves few workloads' acceptors). A member of an
    /// older version, which would refuse every register message, is never chosen.
    pub(super) fn acceptors_of(&self, workload: &str) -> Vec<String> {
        if let Some(held) = self.records.get(workload)
            && !held.record.acceptors.is_empty()
        {
            return held.record.acceptors.clone();
        }
        let mut members = self.acceptor_candidates(workload);
        members.truncate(DEFAULT_ACCEPTORS);
        members
    }

    /// Whether `node` is live (by this node's membership) and keeps lease registers: this
    /// node, if strong workloads are enabled here, or a member that says so in its
    /// signed metadata.
    pub(super) fn keeps_registers(&self, node: &str) -> bool {
        if node == self.id {
            return self.strong_enabled;
        }
        self.membership.member(node).is_some_and(|m| {
            m.state != crate::messages::MemberState::Dead
                && m.meta.as_ref().is_some_and(|meta| meta.lease_registers)
        })
    }

    /// The live members that keep lease registers (this node included, if it does), in
    /// the order `workload`'s acceptors are chosen from them.
    pub(super) fn acceptor_candidates(&self, workload: &str) -> Vec<String> {
        let mut members: Vec<String> = self
            .membership
            .live_members()
            .filter(|m| self.keeps_registers(&m.id))
            .map(|m| m.id.to_string())
            .collect();
        if self.strong_enabled && !members.contains(&self.id) {
            members.push(self.id.clone());
        }
        let rank = |member: &String| {
            let hash = Sha256::new()
                .chain_update(workload.as_bytes())
                .chain_update([0])
                .chain_update(member.as_bytes())
                .finalize();
            u64::from_be_bytes(hash[..8].try_into().expect("8 of 32 bytes"))
        };
        members.sort_by_key(|m| (rank(m), m.clone()));
        members
    }

    /// Writes the next generation of `workload` (a spec, or a tombstone when `spec` is
    /// `None`), signed by this node, and pushes it to every live member.
    pub(super) fn write_record(
        &mut self,
        now_ms: u64,
        workload: &str,
        submitter: &str,
        spec: Option<WorkloadSpec>,
        rollout: Option<crate::messages::RolloutPolicy>,
    ) {
        // Members check every record's author against the policy: one this node may not
        // write would be held here alone.
        let action = if spec.is_none() {
            Action::Remove
        } else {
            Action::Submit
        };
        if let Err(denied) = self
            .authorizer
            .check(&self.id, action, key_namespace(workload))
        {
            self.events.push_back(Event::RecordRefused {
                from: self.id.clone(),
                reason: format!("{workload}: this node {}", denied.reason),
            });
            return;
        }
        let acceptors = match &spec {
            Some(spec) if spec.consistency == Consistency::Strong => self.acceptors_of(workload),
            _ => Vec::new(),
        };
        let record = WorkloadRecord {
            workload: workload.to_owned(),
            generation: self.records.next_generation(workload),
            author: self.id.clone(),
            submitter: submitter.to_owned(),
            written_at_ms: now_ms,
            spec,
            rollout,
            acceptors,
        };
        let signed = self
            .membership
            .notary()
            .sign(StatementKind::Record, record.encode());
        if self
            .records
            .insert(record.clone(), signed.clone())
            .is_none()
        {
            self.events.push_back(Event::RecordRefused {
                from: self.id.clone(),
                reason: format!(
                    "{workload}: this node's table is full ({} records)",
                    records::MAX_RECORDS
                ),
            });
            return;
        }
        self.stored_record(&record, &signed, true);
        let members: Vec<String> = self.live_members().collect();
        for member in members {
            self.send(
                member,
                Body::Records(Records {
                    records: vec![signed.clone()],
                }),
            );
        }
    }

    /// A record newer than the one held, from a peer or the store: checked for form, for
    /// its author's signature and for its author's (and submitter's) permission, then
    /// taken. `Ok(false)`: not newer, nothing done.
    fn offer_record(
        &mut self,
        now_ms: u64,
        signed: SignedStatement,
        persist: bool,
    ) -> Result<bool, String> {
        let record =
            WorkloadRecord::decode(&signed.statement).ok_or("the bytes are not a record")?;
        let version = version_of(&record, &signed);
        if records::expired(&record, now_ms) || !self.records.would_take(&record.workload, &version)
        {
            return Ok(false);
        }
        records::check_record(&record, now_ms)?;
        let namespace = key_namespace(&record.workload);
        if !HOSTED_NAMESPACES.contains(&namespace) {
            return Err(format!(
                "{}: this node hosts namespace {HOSTED_NAMESPACES:?} only",
                record.workload
            ));
        }
        let action = if record.is_tombstone() {
            Action::Remove
        } else {
            Action::Submit
        };
        self.authorizer
            .check(&record.author, action, namespace)
            .map_err(|d| format!("{}: its author {}", record.workload, d.reason))?;
        if !record.is_tombstone() {
            self.authorizer
                .check(&record.submitter, Action::Submit, namespace)
                .map_err(|d| format!("{}: its submitter {}", record.workload, d.reason))?;
        }
        // Checked at the time it was written: a record outlives its author's certificate.
        let at = record.written_at_ms.min(now_ms);
        if !self
            .membership
            .notary()
            .verify(StatementKind::Record, &record.author, &signed, at)
        {
            return Err(format!(
                "{} generation {}: not signed by its author {}",
                record.workload, record.generation, record.author
            ));
        }
        let Some(previous) = self.records.insert(record.clone(), signed.clone()) else {
            return Ok(false);
        };
        self.stored_record(&record, &signed, persist);
        self.record_changed(now_ms, &record, previous);
        Ok(true)
    }

    /// What the host stores, and the event, for a record newly held.
    fn stored_record(&mut self, record: &WorkloadRecord, signed: &SignedStatement, persist: bool) {
        self.events.push_back(Event::RecordTaken {
            workload: record.workload.clone(),
            generation: record.generation,
            removed: record.is_tombstone(),
            author: record.author.clone(),
        });
        if persist {
            self.actions.push_back(HostAction::StoreRecord {
                workload: record.workload.clone(),
                record: signed.clone(),
            });
        }
    }

    /// Follows a newer record of a workload: a spec is learned (so a successor can take
    /// the workload over, and a returning owner gives it up when it was submitted again
    /// elsewhere); a tombstone removes the workload here.
    fn record_changed(&mut self, now_ms: u64, record: &WorkloadRecord, _previous: Option<Held>) {
        match &record.spec {
            Some(spec) => {
                self.succession
                    .update(&record.workload, &record.submitter, spec);
                self.ownership_stale = true;
                self.follow_spec(now_ms, &record.workload, spec, record.rollout.as_ref());
            }
            None => self.remove_here(
                &record.workload,
                "removed on another node; revoking its replicas",
            ),
        }
    }

    /// Writes the next generation of `workload` with `replicas` replicas, if this node
    /// holds a live record of it, and follows it here (the owner may be this node).
    pub(super) fn scale(&mut self, now_ms: u64, workload: &str, replicas: u32) {
        let Some((submitter, mut spec, rollout)) = self.records.get(workload).and_then(|h| {
            let spec = h.record.spec.clone()?;
            Some((h.record.submitter.clone(), spec, h.record.rollout.clone()))
        }) else {
            return;
        };
        spec.replicas = replicas;
        if spec.validate().is_err() {
            return;
        }
        // The rollout in force (and what it replaced) carries over: a scale during an
        // update neither ends the update nor loses what a rollback goes back to.
        self.write_record(
            now_ms,
            workload,
            &submitter,
            Some(spec.clone()),
            rollout.clone(),
        );
        self.follow_spec(now_ms, workload, &spec, rollout.as_ref());
    }

    /// Writes the next generation of `workload` with `spec` (its replica count kept from
    /// the record held), rolled out as `policy` says, and follows it here.
    pub(super) fn update(
        &mut self,
        now_ms: u64,
        workload: &str,
        mut spec: WorkloadSpec,
        mut policy: crate::messages::RolloutPolicy,
    ) {
        let Some((submitter, current)) = self.records.get(workload).and_then(|h| {
            let spec = h.record.spec.clone()?;
            Some((h.record.submitter.clone(), spec))
        }) else {
            return;
        };
        spec.replicas = current.replicas;
        if spec.validate().is_err() || spec.name != current.name {
            return;
        }
        policy.previous.get_or_insert(current);
        self.write_record(
            now_ms,
            workload,
            &submitter,
            Some(spec.clone()),
            Some(policy.clone()),
        );
        self.follow_spec(now_ms, workload, &spec, Some(&policy));
    }

    /// Writes the next generation of `workload` with the spec its newest generation
    /// replaced (`parley rollout undo`, or a failed update's rollback, which says why).
    pub(super) fn undo(&mut self, now_ms: u64, workload: &str, failed: Option<String>) {
        let Some((submitter, spec, policy)) = self.records.get(workload).and_then(|h| {
            let policy = h.record.rollout.clone()?;
            let previous = policy.previous.clone()?;
            let spec = h.record.spec.clone()?;
            Some((h.record.submitter.clone(), (spec, previous), policy))
        }) else {
            return;
        };
        let (failed_spec, mut previous) = spec;
        previous.replicas = failed_spec.replicas;
        let policy = crate::messages::RolloutPolicy {
            previous: Some(failed_spec),
            rolled_back: failed,
            ..policy
        };
        self.write_record(
            now_ms,
            workload,
            &submitter,
            Some(previous.clone()),
            Some(policy.clone()),
        );
        self.follow_spec(now_ms, workload, &previous, Some(&policy));
    }

    /// A replacement of a rolling update failed: the update is rolled back, unless it
    /// was a rollback itself (then it stays stopped where it is, for the user to fix).
    pub(super) fn rollout_failed(&mut self, now_ms: u64, workload: &str, reason: String) {
        let rolling_back = self
            .records
            .get(workload)
            .and_then(|h| h.record.rollout.as_ref())
            .is_some_and(|r| r.rolled_back.is_some());
        if !rolling_back && self.owned.contains_key(workload) {
            self.undo(now_ms, workload, Some(reason));
        }
    }

    /// Once a workload is taken up (after a restart, or by a successor): replicas still
    /// on a spec older than its newest record are replaced as the record says, so that an
    /// update its owner did not finish is finished by whoever owns it next.
    pub(super) fn resume_rollout(&mut self, now_ms: u64, workload: &str) {
        let Some((spec, policy)) = self.records.get(workload).and_then(|h| {
            let spec = h.record.spec.clone()?;
            Some((spec, h.record.rollout.clone().unwrap_or_default()))
        }) else {
            return;
        };
        self.announcer.roll_out(
            now_ms,
            workload,
            &spec,
            policy.max_surge,
            policy.max_unavailable,
        );
    }

    /// Brings an owned workload in line with a newer spec: a new replica count is
    /// placed or trimmed at once; a new image, command or environment is rolled out as
    /// `policy` says (by default one replacement at a time beside the replica it
    /// replaces, none missing).
    fn follow_spec(
        &mut self,
        now_ms: u64,
        workload: &str,
        spec: &WorkloadSpec,
        policy: Option<&crate::messages::RolloutPolicy>,
    ) {
        let Some((image, replicas)) = self.owned.get_mut(workload) else {
            // Being taken over: the adoption places from the newest spec.
            if let Some(request) = self.adoptions.values_mut().find(|r| r.workload == workload) {
                request.replicas = spec.replicas;
                request.spec = Some(spec.clone());
            }
            return;
        };
        *image = spec.image.clone();
        if *replicas != spec.replicas {
            *replicas = spec.replicas;
            self.events.push_back(Event::Rescaled {
                workload: workload.to_owned(),
                replicas: spec.replicas,
            });
            self.announcer.rescale(now_ms, workload, spec.replicas);
        }
        let changed = self
            .announcer
            .digests(workload)
            .is_some_and(|(target, _)| target != records::spec_digest(spec));
        if changed {
            let policy = policy.cloned().unwrap_or_default();
            self.events.push_back(Event::RollingOut {
                workload: workload.to_owned(),
                image: spec.image.clone(),
            });
            self.announcer.roll_out(
                now_ms,
                workload,
                spec,
                policy.max_surge,
                policy.max_unavailable,
            );
        }
    }

    /// Removes `workload` from this node: it stops owning it (revoking its replicas) and
    /// stops the replicas it runs.
    pub(super) fn remove_here(&mut self, workload: &str, why: &'static str) {
        let adopting = self.cancel_adoption(workload);
        let owned = self.owned.remove(workload).is_some();
        self.succession.forget(workload);
        if owned || adopting {
            self.announcer.remove(workload);
            self.actions.push_back(HostAction::Forget {
                workload: workload.to_owned(),
                why,
            });
        }
        let running: Vec<(u32, u64)> = self
            .bidder
            .committed()
            .filter(|c| c.workload == workload)
            .map(|c| (c.replica, c.epoch))
            .collect();
        for (replica, epoch) in running {
            self.bidder.remove_instance(workload, replica);
            self.grants.remove(&(workload.to_owned(), replica));
            self.events.push_back(Event::Revoked {
                workload: workload.to_owned(),
                replica,
                epoch,
            });
            self.actions.push_back(HostAction::Revoke {
                workload: workload.to_owned(),
                replica,
                epoch,
            });
        }
        self.award_specs.retain(|(w, _), _| w != workload);
    }

    /// Whether the record held says `workload` was removed.
    pub(super) fn removed_by_record(&self, workload: &str) -> bool {
        self.records
            .get(workload)
            .is_some_and(|h| h.record.is_tombstone())
    }

    /// Records pushed or sent by `from`. One that fails its checks ends the message: a
    /// peer costs at most one failed signature check per message.
    pub(super) fn handle_records(&mut self, now_ms: u64, from: &str, records: Records) {
        for signed in records.records.into_iter().take(MAX_RECORDS_PER_MESSAGE) {
            if let Err(reason) = self.offer_record(now_ms, signed, true) {
                self.events.push_back(Event::RecordRefused {
                    from: from.to_owned(),
                    reason,
                });
                break;
            }
        }
    }

    /// A peer's summary: a different one is answered with this node's versions.
    pub(super) fn handle_record_digest(&mut self, from: &str, digest: &RecordDigest) {
        if *digest == self.records.digest() {
            return;
        }
        for versions in self.records.versions(None, None, true) {
            self.send(from.to_owned(), Body::RecordVersions(versions));
        }
    }

    /// A peer's versions of a key range: what it lacks is sent; what this node lacks is
    /// asked for with its own versions of the range (once: an answer asks nothing back).
    pub(super) fn handle_record_versions(&mut self, from: &str, theirs: &RecordVersions) {
        let (newer_here, newer_there) = self.records.compare(theirs);
        for chunk in chunk_records(newer_here) {
            self.send(from.to_owned(), Body::Records(chunk));
        }
        if newer_there && theirs.reply {
            let ours =
                self.records
                    .versions(theirs.after.as_deref(), theirs.through.as_deref(), false);
            for versions in ours {
                self.send(from.to_owned(), Body::RecordVersions(versions));
            }
        }
    }

    /// Sends this node's summary to `member` (a newcomer, a seed, one back from away).
    pub(super) fn offer_digest(&mut self, member: &str) {
        if member != self.id {
            let digest = self.records.digest();
            self.send(member.to_owned(), Body::RecordDigest(digest));
        }
    }

    /// An anti-entropy round, if due: drops expired tombstones and sends the summary to
    /// one random live member. A node holding nothing starts no round; the others' rounds
    /// reach it.
    pub(super) fn record_round(&mut self, now_ms: u64) {
        if now_ms < self.next_record_sync_ms {
            return;
        }
        self.next_record_sync_ms = now_ms + SYNC_INTERVAL_MS;
        for workload in self.records.expire(now_ms) {
            self.actions.push_back(HostAction::DropRecord { workload });
        }
        if self.records.is_empty() || self.static_members {
            return;
        }
        let count = self.membership.member_count();
        if count == 0 {
            return;
        }
        // xorshift64: the choice needs spread, not secrecy.
        self.record_rng ^= self.record_rng << 13;
        self.record_rng ^= self.record_rng >> 7;
        self.record_rng ^= self.record_rng << 17;
        let start = usize::try_from(self.record_rng % count as u64).unwrap_or(0);
        let pick = self
            .live_members()
            .skip(start)
            .chain(self.live_members())
            .next();
        if let Some(member) = pick {
            self.offer_digest(&member);
        }
    }
}

impl Negotiator {
    /// Writes a tombstone of `workload` unless the record held already is one.
    pub(super) fn write_tombstone(&mut self, now_ms: u64, workload: &str) {
        if self.removed_by_record(workload) {
            return;
        }
        let submitter = self
            .records
            .get(workload)
            .map(|h| h.record.submitter.clone())
            .or_else(|| self.succession.submitter(workload).map(str::to_owned))
            .unwrap_or_else(|| self.id.clone());
        self.write_record(now_ms, workload, &submitter, None, None);
    }

    /// Checks a workload this node stored as its own against the newest record before
    /// taking it up again (after a restart): one removed, or submitted again elsewhere,
    /// while this node was away is forgotten (`false`); one changed since is taken up at
    /// its newest generation; one with no record yet (stored by an older version) gets
    /// one.
    pub(super) fn adopt_newest(&mut self, now_ms: u64, request: &mut PlacementRequest) -> bool {
        let submitter = request.submitter.clone().unwrap_or_else(|| self.id.clone());
        let newest = self
            .records
            .get(&request.workload)
            .map(|h| (h.record.submitter.clone(), h.record.spec.clone()));
        match newest {
            Some((_, None)) => {
                self.actions.push_back(HostAction::Forget {
                    workload: request.workload.clone(),
                    why: "removed on another node while this node was away",
                });
                false
            }
            Some((holder, Some(_))) if holder != submitter => {
                self.actions.push_back(HostAction::Forget {
                    workload: request.workload.clone(),
                    why: "submitted again on another node while this node was away",
                });
                false
            }
            Some((_, Some(spec))) => {
                // The spec's fields, not the placement hints the submitter added.
                if request.spec.as_ref() != Some(&spec) {
                    request.image.clone_from(&spec.image);
                    request.replicas = spec.replicas;
                    request.resources = spec.resources;
                    request.constraints.clone_from(&spec.constraints);
                    request.spec = Some(spec);
                }
                true
            }
            None => {
                if let Some(spec) = request.spec.clone() {
                    self.write_record(now_ms, &request.workload, &submitter, Some(spec), None);
                }
                true
            }
        }
    }
}
