//! The replicated table of workload records: every node holds every workload's newest
//! [`WorkloadRecord`] (a spec at a generation, or a tombstone), as its author signed it.
//!
//! Writes are pushed to every member at once; anti-entropy repairs what pushes missed (a
//! node away, a partition). Every [`SYNC_INTERVAL_MS`] a node sends one random member a
//! [`RecordDigest`], an order-independent hash of what it holds. A member whose own hash
//! differs answers with its [`RecordVersions`], by key range; the first node sends back the
//! records that are newer than, or missing from, the list, and the list of its own where
//! the member holds something it lacks, which the member answers in turn. Two nodes
//! therefore agree after one exchange, and a record spreads to every node in
//! O(log N) rounds.
//!
//! Merging is deterministic ([`RecordVersion`]): the higher generation wins, a tombstone
//! wins at its generation, and a hash of the signed bytes breaks the remaining ties.
//! Tombstones are kept [`TOMBSTONE_KEEP_MS`] after they were written so that they reach
//! nodes that were away, then dropped everywhere.
//!
//! The table itself is pure bookkeeping; the negotiator checks a record's signature and
//! its author's permission before offering it here.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::messages::{
    RecordDigest, RecordVersion, RecordVersions, Records, SignedStatement, VersionOf,
    WorkloadRecord,
};
use crate::workload::{WorkloadSpec, key_name, key_namespace};

/// How long a tombstone is kept after it was written: a node away for longer than this
/// and holding the workload's older record brings the workload back.
pub const TOMBSTONE_KEEP_MS: u64 = 24 * 60 * 60 * 1000;

/// Time between anti-entropy rounds (one digest to one random member).
pub const SYNC_INTERVAL_MS: u64 = 2_000;

/// Most records a table holds: the backstop that bounds memory whatever a peer sends
/// (growth needs records signed by nodes allowed to submit).
pub const MAX_RECORDS: usize = 65_536;

/// Highest generation taken from a peer: a member allowed to submit must not be able to
/// push a workload's generation to `u64::MAX`, where no later write could win.
pub const MAX_GENERATION: u64 = 1 << 48;

/// How far in the future a record's time may be: a tombstone written "tomorrow" would
/// otherwise outlive [`TOMBSTONE_KEEP_MS`].
pub const MAX_CLOCK_SKEW_MS: u64 = 10 * 60 * 1000;

/// Longest node id a record may name.
const MAX_ID_LEN: usize = 512;

/// Bytes of record versions or records per message, well inside one frame.
const CHUNK_BYTES: usize = 32 * 1024;

/// A record held, with what is derived from its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The record.
    pub record: WorkloadRecord,
    /// As its author signed it (what travels).
    pub signed: SignedStatement,
    /// Its place in the merge order.
    pub version: RecordVersion,
}

/// The records one node holds.
#[derive(Debug, Default)]
pub struct RecordTable {
    held: BTreeMap<String, Held>,
    fingerprint: u64,
}

/// The content digest of what each replica of a spec runs (SHA-256 of the spec's CBOR
/// with its replica count left out, hex): what tells a rolling update's new replicas from
/// its old ones. A scale changes no replica's digest.
pub fn spec_digest(spec: &WorkloadSpec) -> String {
    let mut bytes = Vec::with_capacity(256);
    let per_replica = WorkloadSpec {
        replicas: 1,
        ..spec.clone()
    };
    ciborium::into_writer(&per_replica, &mut bytes).expect("a spec is plain data");
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The version of `record` signed as `signed`.
pub fn version_of(record: &WorkloadRecord, signed: &SignedStatement) -> RecordVersion {
    let hash = Sha256::digest(&signed.statement);
    RecordVersion {
        generation: record.generation,
        removed: record.is_tombstone(),
        tiebreak: u64::from_be_bytes(hash[..8].try_into().expect("8 of 32 bytes")),
    }
}

/// One record's share of the fingerprint.
fn entry_hash(workload: &str, version: &RecordVersion) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(workload.as_bytes());
    hasher.update([0]);
    hasher.update(version.generation.to_be_bytes());
    hasher.update([u8::from(version.removed)]);
    hasher.update(version.tiebreak.to_be_bytes());
    let hash = hasher.finalize();
    u64::from_be_bytes(hash[..8].try_into().expect("8 of 32 bytes"))
}

/// Checks what can be checked of a record without its author's key: its key and spec are
/// valid and agree, its numbers are bounded, and a tombstone is still worth keeping.
pub fn check_record(record: &WorkloadRecord, now_ms: u64) -> Result<(), String> {
    let name = key_name(&record.workload);
    if crate::workload::WorkloadName::new(name).is_err()
        || key_namespace(&record.workload).is_empty()
    {
        return Err(format!("{:?} is not a workload key", record.workload));
    }
    if !(1..=MAX_GENERATION).contains(&record.generation) {
        return Err(format!(
            "generation {} is outside 1..={MAX_GENERATION}",
            record.generation
        ));
    }
    for (what, id) in [("author", &record.author), ("submitter", &record.submitter)] {
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err(format!(
                "its {what} is empty or longer than {MAX_ID_LEN} bytes"
            ));
        }
    }
    if record.written_at_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
        return Err(format!(
            "it was written at {} ms, more than {MAX_CLOCK_SKEW_MS} ms ahead of this node's clock",
            record.written_at_ms
        ));
    }
    if record.acceptors.len() > crate::register::MAX_ACCEPTORS {
        return Err(format!(
            "it names {} acceptors, at most {}",
            record.acceptors.len(),
            crate::register::MAX_ACCEPTORS
        ));
    }
    for (i, acceptor) in record.acceptors.iter().enumerate() {
        if acceptor.is_empty() || acceptor.len() > MAX_ID_LEN {
            return Err(format!(
                "an acceptor is empty or longer than {MAX_ID_LEN} bytes"
            ));
        }
        if record.acceptors[..i].contains(acceptor) {
            return Err(format!("it names the acceptor {acceptor} twice"));
        }
    }
    let strong = record
        .spec
        .as_ref()
        .is_some_and(|s| s.consistency == crate::workload::Consistency::Strong);
    if strong && record.acceptors.is_empty() {
        return Err("it is a strong workload with no acceptors".to_owned());
    }
    let previous = record.rollout.as_ref().and_then(|r| r.previous.as_ref());
    for spec in record.spec.iter().chain(previous) {
        spec.validate().map_err(|e| e.to_string())?;
        if spec.name.as_str() != name {
            return Err(format!(
                "its spec names {}, not the workload {}",
                spec.name, record.workload
            ));
        }
    }
    if let Some(rollout) = &record.rollout {
        let most = crate::workload::MAX_REPLICAS;
        if rollout.max_surge > most || rollout.max_unavailable > most {
            return Err(format!(
                "its rollout moves more than {most} replicas at once"
            ));
        }
        if rollout
            .rolled_back
            .as_ref()
            .is_some_and(|r| r.len() > crate::messages::MAX_STATE_REASON_LEN)
        {
            return Err("its rollback reason is too long".to_owned());
        }
    }
    Ok(())
}

/// Whether a tombstone written at `written_at_ms` has been kept long enough.
pub fn expired(record: &WorkloadRecord, now_ms: u64) -> bool {
    record.is_tombstone() && now_ms.saturating_sub(record.written_at_ms) >= TOMBSTONE_KEEP_MS
}

/// Cuts `records` into messages of at most [`CHUNK_BYTES`] each (one record alone if it is
/// larger).
pub fn chunk_records(records: Vec<SignedStatement>) -> Vec<Records> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for signed in records {
        let size = signed.statement.len() + signed.credential.len() + signed.signature.len() + 16;
        if !current.is_empty() && bytes + size > CHUNK_BYTES {
            chunks.push(Records {
                records: std::mem::take(&mut current),
            });
            bytes = 0;
        }
        bytes += size;
        current.push(signed);
    }
    if !current.is_empty() {
        chunks.push(Records { records: current });
    }
    chunks
}

impl RecordTable {
    /// The record held for `workload`, tombstone or not.
    pub fn get(&self, workload: &str) -> Option<&Held> {
        self.held.get(workload)
    }

    /// Every record held, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Held> {
        self.held.values()
    }

    /// The records of workloads that are not removed.
    pub fn live(&self) -> impl Iterator<Item = &Held> {
        self.held.values().filter(|h| !h.record.is_tombstone())
    }

    /// Records held (tombstones included).
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The summary sent in anti-entropy rounds.
    pub fn digest(&self) -> RecordDigest {
        RecordDigest {
            fingerprint: self.fingerprint,
            count: u32::try_from(self.held.len()).unwrap_or(u32::MAX),
        }
    }

    /// The generation a new write of `workload` gets.
    pub fn next_generation(&self, workload: &str) -> u64 {
        self.held
            .get(workload)
            .map_or(1, |h| h.record.generation.saturating_add(1))
    }

    /// Whether a record at `version` would replace what is held for `workload` (and fit).
    pub fn would_take(&self, workload: &str, version: &RecordVersion) -> bool {
        match self.held.get(workload) {
            Some(held) => *version > held.version,
            None => self.held.len() < MAX_RECORDS,
        }
    }

    /// Keeps a checked record if it is newer than the one held; returns what it replaced
    /// (`Some(None)`: nothing), or `None` if it was not taken.
    pub fn insert(
        &mut self,
        record: WorkloadRecord,
        signed: SignedStatement,
    ) -> Option<Option<Held>> {
        let version = version_of(&record, &signed);
        if !self.would_take(&record.workload, &version) {
            return None;
        }
        let workload = record.workload.clone();
        self.fingerprint = self
            .fingerprint
            .wrapping_add(entry_hash(&workload, &version));
        let held = Held {
            record,
            signed,
            version,
        };
        let previous = self.held.insert(workload.clone(), held);
        if let Some(previous) = &previous {
            self.fingerprint = self
                .fingerprint
                .wrapping_sub(entry_hash(&workload, &previous.version));
        }
        Some(previous)
    }

    /// Drops tombstones kept long enough; returns their workloads.
    pub fn expire(&mut self, now_ms: u64) -> Vec<String> {
        let gone: Vec<String> = self
            .held
            .values()
            .filter(|h| expired(&h.record, now_ms))
            .map(|h| h.record.workload.clone())
            .collect();
        for workload in &gone {
            if let Some(held) = self.held.remove(workload) {
                self.fingerprint = self
                    .fingerprint
                    .wrapping_sub(entry_hash(workload, &held.version));
            }
        }
        gone
    }

    /// The versions held in `(after, through]`, cut into messages that each cover a
    /// contiguous part of that range.
    pub fn versions(
        &self,
        after: Option<&str>,
        through: Option<&str>,
        reply: bool,
    ) -> Vec<RecordVersions> {
        let in_range = self
            .held
            .iter()
            .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
            .filter(|(k, _)| through.is_none_or(|t| k.as_str() <= t));
        let mut chunks = Vec::new();
        let mut start = after.map(str::to_owned);
        let mut current: Vec<VersionOf> = Vec::new();
        let mut bytes = 0;
        for (workload, held) in in_range {
            let size = workload.len() + 32;
            if !current.is_empty() && bytes + size > CHUNK_BYTES {
                let last = current.last().map(|v| v.workload.clone());
                chunks.push(RecordVersions {
                    after: start.take(),
                    through: last.clone(),
                    versions: std::mem::take(&mut current),
                    reply,
                });
                start = last;
                bytes = 0;
            }
            bytes += size;
            current.push(VersionOf {
                workload: workload.clone(),
                version: held.version.clone(),
            });
        }
        chunks.push(RecordVersions {
            after: start,
            through: through.map(str::to_owned),
            versions: current,
            reply,
        });
        chunks
    }

    /// Compares a peer's versions of a range with this table: the records held that are
    /// newer than the peer's or that it lacks, and whether the peer holds something newer
    /// than this table (or that it lacks).
    pub fn compare(&self, theirs: &RecordVersions) -> (Vec<SignedStatement>, bool) {
        let their: BTreeMap<&str, &RecordVersion> = theirs
            .versions
            .iter()
            .map(|v| (v.workload.as_str(), &v.version))
            .collect();
        let after = theirs.after.as_deref();
        let through = theirs.through.as_deref();
        let newer_here: Vec<SignedStatement> = self
            .held
            .iter()
            .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
            .filter(|(k, _)| through.is_none_or(|t| k.as_str() <= t))
            .filter(|(k, held)| their.get(k.as_str()).is_none_or(|v| **v < held.version))
            .map(|(_, held)| held.signed.clone())
            .collect();
        let newer_there = their.iter().any(|(k, v)| self.would_take(k, v));
        (newer_here, newer_there)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::WorkloadName;

    fn spec(name: &str, image: &str) -> WorkloadSpec {
        WorkloadSpec::new(WorkloadName::new(name).unwrap(), image, vec![], vec![]).unwrap()
    }

    fn record(name: &str, generation: u64, spec: Option<WorkloadSpec>, author: &str) -> Held {
        let record = WorkloadRecord {
            workload: format!("default/{name}"),
            generation,
            author: author.into(),
            submitter: "a".into(),
            written_at_ms: 1_000,
            acceptors: Vec::new(),
            spec,
            rollout: None,
        };
        let signed = SignedStatement {
            statement: record.encode(),
            credential: Vec::new(),
            signature: Vec::new(),
        };
        Held {
            version: version_of(&record, &signed),
            record,
            signed,
        }
    }

    fn put(table: &mut RecordTable, held: &Held) -> bool {
        table
            .insert(held.record.clone(), held.signed.clone())
            .is_some()
    }

    #[test]
    fn the_higher_generation_wins_and_a_tombstone_wins_its_generation() {
        let mut table = RecordTable::default();
        let one = record("web", 1, Some(spec("web", "img:1")), "a");
        let two = record("web", 2, Some(spec("web", "img:2")), "b");
        let gone = record("web", 2, None, "c");
        assert!(put(&mut table, &two));
        assert!(
            !put(&mut table, &one),
            "an older generation must not replace a newer"
        );
        assert!(
            put(&mut table, &gone),
            "a tombstone beats a spec of its generation"
        );
        assert!(!put(&mut table, &two));
        assert_eq!(table.next_generation("default/web"), 3);
        assert_eq!(table.live().count(), 0);
    }

    #[test]
    fn the_same_writes_in_any_order_give_the_same_table() {
        let writes = [
            record("web", 1, Some(spec("web", "img:1")), "a"),
            record("web", 2, Some(spec("web", "img:2")), "b"),
            record("web", 2, Some(spec("web", "img:3")), "c"),
            record("db", 1, Some(spec("db", "pg")), "a"),
            record("db", 2, None, "b"),
        ];
        let mut forward = RecordTable::default();
        let mut backward = RecordTable::default();
        for w in &writes {
            put(&mut forward, w);
        }
        for w in writes.iter().rev() {
            put(&mut backward, w);
        }
        assert_eq!(forward.digest(), backward.digest());
        let versions = |t: &RecordTable| t.iter().map(|h| h.version.clone()).collect::<Vec<_>>();
        assert_eq!(versions(&forward), versions(&backward));
        let web = forward.get("default/web").unwrap();
        assert_eq!(web.record.generation, 2);
    }

    #[test]
    fn comparing_ranges_finds_what_each_side_lacks() {
        let mut here = RecordTable::default();
        let mut there = RecordTable::default();
        let web1 = record("web", 1, Some(spec("web", "img:1")), "a");
        let web2 = record("web", 2, Some(spec("web", "img:2")), "a");
        let db = record("db", 1, Some(spec("db", "pg")), "a");
        let cache = record("cache", 1, Some(spec("cache", "redis")), "a");
        put(&mut here, &web2);
        put(&mut here, &db);
        put(&mut there, &web1);
        put(&mut there, &cache);
        assert_ne!(here.digest(), there.digest());
        let theirs = there.versions(None, None, true);
        assert_eq!(theirs.len(), 1);
        let (send, lacking) = here.compare(&theirs[0]);
        let sent: Vec<String> = send
            .iter()
            .map(|s| WorkloadRecord::decode(&s.statement).unwrap().workload)
            .collect();
        assert_eq!(sent, ["default/db", "default/web"]);
        assert!(lacking, "there holds cache, which here lacks");
        // After the exchange both hold the same.
        for held in [&web2, &db] {
            put(&mut there, held);
        }
        put(&mut here, &cache);
        assert_eq!(here.digest(), there.digest());
        let (send, lacking) = here.compare(&there.versions(None, None, false)[0]);
        assert!(send.is_empty() && !lacking);
    }

    #[test]
    fn versions_are_cut_into_contiguous_ranges_that_cover_every_key() {
        let mut table = RecordTable::default();
        for i in 0..3_000 {
            put(
                &mut table,
                &record(
                    &format!("w{i:05}"),
                    1,
                    Some(spec(&format!("w{i:05}"), "i")),
                    "a",
                ),
            );
        }
        let chunks = table.versions(None, None, false);
        assert!(chunks.len() > 1, "3,000 versions must not fit one message");
        assert_eq!(chunks[0].after, None);
        assert_eq!(chunks.last().unwrap().through, None);
        for pair in chunks.windows(2) {
            assert_eq!(pair[0].through, pair[1].after, "ranges must be contiguous");
        }
        let total: usize = chunks.iter().map(|c| c.versions.len()).sum();
        assert_eq!(total, 3_000);
        // An empty peer lacks each range's records, and only those.
        let empty = RecordTable::default();
        let mut sent = 0;
        for chunk in &chunks {
            let mut range = chunk.clone();
            range.versions.clear();
            let (send, _) = table.compare(&range);
            sent += send.len();
            let (nothing, lacking) = empty.compare(chunk);
            assert!(
                nothing.is_empty() && lacking,
                "an empty table lacks every range"
            );
        }
        assert_eq!(sent, 3_000);
    }

    #[test]
    fn tombstones_expire_and_bad_records_are_refused() {
        let mut table = RecordTable::default();
        let gone = record("web", 2, None, "b");
        put(&mut table, &gone);
        assert!(table.expire(1_000 + TOMBSTONE_KEEP_MS - 1).is_empty());
        assert_eq!(table.expire(1_000 + TOMBSTONE_KEEP_MS), ["default/web"]);
        assert_eq!(table.digest(), RecordTable::default().digest());

        let mut bad = record("web", 1, Some(spec("other", "img")), "a").record;
        assert!(
            check_record(&bad, 1_000)
                .unwrap_err()
                .contains("names other")
        );
        bad.spec = Some(spec("web", "img"));
        bad.generation = MAX_GENERATION + 1;
        assert!(check_record(&bad, 1_000).is_err());
        bad.generation = 1;
        bad.written_at_ms = 1_000 + MAX_CLOCK_SKEW_MS + 1;
        assert!(check_record(&bad, 1_000).unwrap_err().contains("ahead"));
        bad.written_at_ms = 1_000;
        bad.workload = "default/Not A Name".into();
        assert!(check_record(&bad, 1_000).is_err());
    }
}
