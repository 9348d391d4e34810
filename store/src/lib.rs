//! Parley's durable state, kept in sled.
//!
//! This is the only crate that imports sled. It offers typed trees (workloads, members,
//! identity references) whose values are serde types in a versioned envelope, and the
//! transactions the negotiation needs (reserve, accept, release) over concrete
//! [`records`]. Anything another node will rely on is flushed before it is acknowledged
//! ([`Store::flush`]).
//!
//! Failure is reported, never hidden: a store that sled cannot read (or that panics sled)
//! is [`StoreError::Corrupt`]; one that has lost writes it had acknowledged before a clean
//! shutdown is [`StoreError::LostWrites`]; a full disk is [`StoreError::DiskFull`]. Each
//! message names the path and the way out.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

mod migrate;
pub mod records;
mod tree;

use records::{Event, IdentityRef, Instance, Reservation, instance_key};
pub use tree::Tree;

/// Schema version written by this build. Older stores are migrated on open; newer ones are
/// refused rather than misread.
pub const SCHEMA_VERSION: u32 = 2;

/// Namespace of workloads that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Default number of audit events kept; older ones are dropped as new ones arrive.
pub const DEFAULT_MAX_EVENTS: usize = 10_000;

const SCHEMA_KEY: &[u8] = b"parley.schema_version";
/// Counts acknowledged flushes; see [`Store::close`] for how it detects lost writes.
const GENERATION_KEY: &[u8] = b"parley.generation";
/// File beside sled's own, holding the generation at the last clean close.
const CLOSED_AT_FILE: &str = "parley-closed-generation";

const WORKLOADS_TREE: &str = "workloads";
const INSTANCES_TREE: &str = "instances";
const RESERVATIONS_TREE: &str = "reservations";
const MEMBERS_TREE: &str = "members";
const IDENTITY_TREE: &str = "identity";
const ASSIGNMENTS_TREE: &str = "assignments";
const EVENTS_TREE: &str = "events";
const JOIN_TOKENS_TREE: &str = "join_tokens";
const ENROLLED_NODES_TREE: &str = "enrolled_nodes";
const REVOKED_KEYS_TREE: &str = "revoked_keys";
const REGISTERS_TREE: &str = "registers";
const RECORDS_TREE: &str = "records";

/// How to get out of a store that cannot be used, for error messages.
const WAY_OUT: &str = "move it aside and rebuild it from Podman labels and peers with \
                       `parley agent --reset-state`";

/// What went wrong with the store. Messages name the path or the record so a user can act.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the store's lock.
    #[error(
        "the state store at {path} is in use by another process (probably another parley \
         agent); stop it or pass a different --data-dir"
    )]
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// The store could not be opened for a reason other than corruption (permissions, a
    /// missing parent directory, …).
    #[error("cannot open the state store at {path}: {source}")]
    Open {
        /// The store directory.
        path: PathBuf,
        /// The underlying sled error.
        #[source]
        source: sled::Error,
    },
    /// The store's files are damaged.
    #[error("the state store at {path} is corrupt or unreadable ({reason}); {WAY_OUT}")]
    Corrupt {
        /// The store directory.
        path: PathBuf,
        /// What sled reported.
        reason: String,
    },
    /// The store holds fewer acknowledged writes than it did at its last clean close: its
    /// files were truncated or replaced by an older copy.
    #[error(
        "the state store at {path} has lost writes: it holds generation {found}, but \
         generation {expected} was recorded at its last clean shutdown (truncated files or \
         an old backup?); {WAY_OUT}"
    )]
    LostWrites {
        /// The store directory.
        path: PathBuf,
        /// Generation found in the store.
        found: u64,
        /// Generation recorded at the last clean close.
        expected: u64,
    },
    /// The store was written by a newer Parley whose schema this build does not know.
    #[error(
        "the state store at {path} has schema version {found}, newer than the {supported} this \
         parley understands; upgrade parley or use a different --data-dir"
    )]
    SchemaTooNew {
        /// The store directory.
        path: PathBuf,
        /// Version found on disk.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// A record could not be decoded.
    #[error("corrupt record {key:?} in tree {tree}: {reason}")]
    Record {
        /// Tree holding the record.
        tree: String,
        /// Key of the record, lossily decoded.
        key: String,
        /// Why it could not be decoded.
        reason: String,
    },
    /// The disk holding the store is full. Writes fail until space is freed and the agent
    /// restarted; reads keep working.
    #[error(
        "the disk holding the state store at {path} is full; free space there and restart \
         the agent (it takes no new work until then)"
    )]
    DiskFull {
        /// The store directory.
        path: PathBuf,
    },
    /// Any other read, write or flush failure.
    #[error("state store I/O at {path} failed: {source}")]
    Io {
        /// The store directory.
        path: PathBuf,
        /// The underlying sled error.
        #[source]
        source: sled::Error,
    },
    /// An award quoted a reservation this node does not hold (never made, released, or
    /// already accepted).
    #[error("no reservation {id} is held")]
    UnknownReservation {
        /// The reservation id.
        id: String,
    },
    /// A reservation with this id is already held.
    #[error("reservation {id} already exists")]
    DuplicateReservation {
        /// The reservation id.
        id: String,
    },
    /// The reservation lapsed before the award arrived.
    #[error("reservation {id} expired at {expired_at_ms} ms")]
    ReservationExpired {
        /// The reservation id.
        id: String,
        /// When it lapsed.
        expired_at_ms: u64,
    },
    /// The replica is already committed under a newer epoch: the award is stale.
    #[error(
        "{workload} replica {replica} is held at epoch {held}, newer than the offered {offered}"
    )]
    StaleEpoch {
        /// Workload key.
        workload: String,
        /// Replica index.
        replica: u32,
        /// Epoch already committed.
        held: u64,
        /// Epoch of the refused award.
        offered: u64,
    },
}

impl StoreError {
    /// Whether the error means the store cannot take writes at all (full disk, I/O
    /// failure, corruption), as opposed to a refused operation.
    pub fn is_fatal_for_writes(&self) -> bool {
        matches!(
            self,
            Self::DiskFull { .. } | Self::Io { .. } | Self::Corrupt { .. }
        )
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Sorts a sled error by what a user can do about it.
pub(crate) fn classify(path: &Path, error: sled::Error) -> StoreError {
    match error {
        sled::Error::Io(ref io) if io.kind() == std::io::ErrorKind::StorageFull => {
            StoreError::DiskFull {
                path: path.to_path_buf(),
            }
        }
        sled::Error::Corruption { at, .. } => StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("sled found corruption at {at:?}"),
        },
        other => StoreError::Io {
            path: path.to_path_buf(),
            source: other,
        },
    }
}

/// Options for [`Store::open_with`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Audit events kept.
    pub max_events: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_events: DEFAULT_MAX_EVENTS,
        }
    }
}

/// An open store. Cheap to clone; all clones share one sled database.
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
    path: Arc<Path>,
    generation: Arc<AtomicU64>,
    options: StoreOptions,
    instances: sled::Tree,
    reservations: sled::Tree,
    events: sled::Tree,
    /// Entries in `events`, counted once at open: sled's `len()` walks the whole tree,
    /// too slow to call on every appended event.
    events_len: Arc<AtomicUsize>,
}

/// How long [`Store::open`] waits for a file lock still held by a store that was just
/// dropped in this process: sled's background flusher releases it shortly after the last
/// handle goes away. A lock held by another process is reported after this time.
const LOCK_WAIT: Duration = Duration::from_secs(2);

impl Store {
    /// Opens (or creates) the store in directory `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Opens (or creates) the store in directory `path`: takes its lock, checks that sled
    /// can read it, migrates an older schema, and checks that no acknowledged write was
    /// lost since the last clean close.
    pub fn open_with(path: impl AsRef<Path>, options: StoreOptions) -> Result<Self> {
        let path: Arc<Path> = Arc::from(path.as_ref());
        let db = open_sled(&path)?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| classify(&path, e));
        let events = tree(EVENTS_TREE)?;
        let store = Self {
            instances: tree(INSTANCES_TREE)?,
            reservations: tree(RESERVATIONS_TREE)?,
            events_len: Arc::new(AtomicUsize::new(events.len())),
            events,
            generation: Arc::new(AtomicU64::new(0)),
            db,
            path,
            options,
        };
        store.check_schema()?;
        store.check_generation()?;
        Ok(store)
    }

    fn fail(&self, error: sled::Error) -> StoreError {
        classify(&self.path, error)
    }

    fn check_schema(&self) -> Result<()> {
        let Some(raw) = self.db.get(SCHEMA_KEY).map_err(|e| self.fail(e))? else {
            // A new store. One without a schema key but with data would be a store that
            // lost its first write, which sled's log order makes impossible short of
            // corruption; treat it as new only if it is really empty.
            if self.db.tree_names().iter().any(|name| {
                self.db
                    .open_tree(name)
                    .is_ok_and(|t| !t.is_empty() && name.as_ref() != b"__sled__default")
            }) {
                return Err(StoreError::Corrupt {
                    path: self.path.to_path_buf(),
                    reason: "the schema version record is missing".to_owned(),
                });
            }
            self.db
                .insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())
                .map_err(|e| self.fail(e))?;
            self.db.flush().map_err(|e| self.fail(e))?;
            return Ok(());
        };
        let found =
            u32::from_be_bytes(raw.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                path: self.path.to_path_buf(),
                reason: format!("the schema version record has {} bytes, not 4", raw.len()),
            })?);
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                path: self.path.to_path_buf(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            migrate::migrate(&self.db, &self.path, found)?;
        }
        Ok(())
    }

    fn check_generation(&self) -> Result<()> {
        let found = match self.db.get(GENERATION_KEY).map_err(|e| self.fail(e))? {
            Some(raw) => {
                u64::from_be_bytes(raw.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    path: self.path.to_path_buf(),
                    reason: "the generation record is not 8 bytes".to_owned(),
                })?)
            }
            None => 0,
        };
        self.generation.store(found, Ordering::SeqCst);
        let closed_at = match std::fs::read_to_string(self.path.join(CLOSED_AT_FILE)) {
            Ok(text) => text.trim().parse::<u64>().ok(),
            Err(_) => None,
        };
        match closed_at {
            Some(expected) if found < expected => Err(StoreError::LostWrites {
                path: self.path.to_path_buf(),
                found,
                expected,
            }),
            _ => Ok(()),
        }
    }

    /// The directory this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn typed<T>(&self, name: &'static str) -> Result<Tree<T>>
    where
        T: Serialize + DeserializeOwned,
    {
        Ok(Tree {
            inner: self.db.open_tree(name).map_err(|e| self.fail(e))?,
            name,
            store_path: Arc::clone(&self.path),
            _value: std::marker::PhantomData,
        })
    }

    /// Desired workloads, keyed `namespace/name`, of the caller's spec type.
    pub fn workloads<T: Serialize + DeserializeOwned>(&self) -> Result<Tree<T>> {
        self.typed(WORKLOADS_TREE)
    }

    /// This node's copy of the replicated workload records (each workload's newest spec
    /// or tombstone, as its author signed it), keyed `namespace/name`, of the caller's
    /// type.
    pub fn records<T: Serialize + DeserializeOwned>(&self) -> Result<Tree<T>> {
        self.typed(RECORDS_TREE)
    }

    /// The last known view of the members, keyed by node id, of the caller's type.
    pub fn members<T: Serialize + DeserializeOwned>(&self) -> Result<Tree<T>> {
        self.typed(MEMBERS_TREE)
    }

    /// Replicas awarded to this node by their workloads' owners (spec, replica, epoch,
    /// owner), keyed `namespace/name#replica`, of the caller's type. An award is flushed
    /// here before it is acknowledged.
    pub fn assignments<T: Serialize + DeserializeOwned>(&self) -> Result<Tree<T>> {
        self.typed(ASSIGNMENTS_TREE)
    }

    /// Join tokens this node issued and that were not used yet, keyed by token id, of
    /// the caller's type (a digest of the secret, never the secret).
    pub fn join_tokens<T: Serialize + DeserializeOwned>(&self) -> Result<Tree<T>> {
        self.typed(JOIN_TOKENS_TREE)
    }

    /// The enrollment registry an issuer keeps: which key holds each node name it
    /// enrolled or renewed, keyed by node name, of the caller's type.
    pub fn enrolled_nodes<T: Serialize + DeserializeOwned>(&self) -> Result<Tree<T>> {
        self.typed(ENROLLED_NODES_TREE)
    }

    /// The node keys an issuer revoked, keyed `NAME/KEY`, of the caller's type.
    pub fn revoked_keys<T: Serialize + DeserializeOwned>(&self) -> Result<Tree<T>> {
        self.typed(REVOKED_KEYS_TREE)
    }

    /// This node's acceptor state of strong replicas' lease registers, keyed
    /// `namespace/name#replica`, of the caller's type. A slot is flushed here before the
    /// promise or acceptance it records is sent.
    pub fn registers<T: Serialize + DeserializeOwned>(&self) -> Result<Tree<T>> {
        self.typed(REGISTERS_TREE)
    }

    /// Where this node's identity material lives, keyed by kind.
    pub fn identity(&self) -> Result<Tree<IdentityRef>> {
        self.typed(IDENTITY_TREE)
    }

    /// Instances this node has committed to, keyed by [`instance_key`].
    pub fn instances(&self) -> Result<Tree<Instance>> {
        self.typed(INSTANCES_TREE)
    }

    /// Reservations this node holds, keyed by id.
    pub fn reservations(&self) -> Result<Tree<Reservation>> {
        self.typed(RESERVATIONS_TREE)
    }

    /// Holds capacity for a bid. Refused if the id is already held.
    pub fn reserve(&self, reservation: &Reservation) -> Result<()> {
        let value = tree::encode(reservation)?;
        match self
            .reservations
            .compare_and_swap(reservation.id.as_bytes(), None::<&[u8]>, Some(value))
            .map_err(|e| self.fail(e))?
        {
            Ok(()) => Ok(()),
            Err(_) => Err(StoreError::DuplicateReservation {
                id: reservation.id.clone(),
            }),
        }
    }

    /// Turns a reservation into an instance, atomically: either the reservation is gone and
    /// the instance committed, or nothing changed. Refused if the reservation is unknown or
    /// expired at `now_ms`, or the replica is already held under a newer epoch.
    pub fn accept(&self, reservation_id: &str, node: &str, now_ms: u64) -> Result<Instance> {
        let outcome =
            (&self.reservations, &self.instances).transaction(|(reservations, instances)| {
                let Some(raw) = reservations.get(reservation_id)? else {
                    return Err(ConflictableTransactionError::Abort(
                        StoreError::UnknownReservation {
                            id: reservation_id.to_owned(),
                        },
                    ));
                };
                let reservation: Reservation =
                    tree::decode(RESERVATIONS_TREE, reservation_id.as_bytes(), &raw)
                        .map_err(ConflictableTransactionError::Abort)?;
                if reservation.expires_at_ms <= now_ms {
                    return Err(ConflictableTransactionError::Abort(
                        StoreError::ReservationExpired {
                            id: reservation.id,
                            expired_at_ms: reservation.expires_at_ms,
                        },
                    ));
                }
                let key = instance_key(&reservation.workload, reservation.replica);
                if let Some(raw) = instances.get(key.as_bytes())? {
                    let held: Instance = tree::decode(INSTANCES_TREE, key.as_bytes(), &raw)
                        .map_err(ConflictableTransactionError::Abort)?;
                    if held.epoch > reservation.epoch {
                        return Err(ConflictableTransactionError::Abort(
                            StoreError::StaleEpoch {
                                workload: reservation.workload,
                                replica: reservation.replica,
                                held: held.epoch,
                                offered: reservation.epoch,
                            },
                        ));
                    }
                }
                let instance = Instance {
                    workload: reservation.workload,
                    replica: reservation.replica,
                    epoch: reservation.epoch,
                    node: node.to_owned(),
                    cpu_millis: reservation.cpu_millis,
                    memory_bytes: reservation.memory_bytes,
                    accepted_at_ms: now_ms,
                };
                let value = tree::encode(&instance).map_err(ConflictableTransactionError::Abort)?;
                reservations.remove(reservation_id)?;
                instances.insert(key.as_bytes(), value)?;
                Ok(instance)
            });
        self.transaction_result(outcome)
    }

    fn transaction_result<T>(
        &self,
        outcome: std::result::Result<T, TransactionError<StoreError>>,
    ) -> Result<T> {
        match outcome {
            Ok(value) => Ok(value),
            Err(TransactionError::Abort(error)) => Err(error),
            Err(TransactionError::Storage(error)) => Err(self.fail(error)),
        }
    }

    /// Frees a reservation (the bid lost). Returns whether it was held.
    pub fn release(&self, reservation_id: &str) -> Result<bool> {
        Ok(self
            .reservations
            .remove(reservation_id)
            .map_err(|e| self.fail(e))?
            .is_some())
    }

    /// Drops every reservation that expired at or before `now_ms` and returns them. A
    /// reservation accepted concurrently is left to the accept.
    pub fn expire_reservations(&self, now_ms: u64) -> Result<Vec<Reservation>> {
        let mut expired = Vec::new();
        for entry in self.reservations.iter() {
            let (key, raw) = entry.map_err(|e| self.fail(e))?;
            let reservation: Reservation = tree::decode(RESERVATIONS_TREE, &key, &raw)?;
            if reservation.expires_at_ms > now_ms {
                continue;
            }
            let removed = self
                .reservations
                .compare_and_swap(&key, Some(raw), None::<&[u8]>)
                .map_err(|e| self.fail(e))?;
            if removed.is_ok() {
                expired.push(reservation);
            }
        }
        Ok(expired)
    }

    /// Forgets an instance (its workload was removed or moved). Returns it if it was held.
    pub fn remove_instance(&self, workload: &str, replica: u32) -> Result<Option<Instance>> {
        let key = instance_key(workload, replica);
        self.instances
            .remove(key.as_bytes())
            .map_err(|e| self.fail(e))?
            .map(|raw| tree::decode(INSTANCES_TREE, key.as_bytes(), &raw))
            .transpose()
    }

    /// Appends to the audit log, dropping the oldest entries beyond the retention limit.
    pub fn record_event(
        &self,
        at_ms: u64,
        kind: &str,
        workload: Option<&str>,
        message: &str,
    ) -> Result<Event> {
        let seq = self.db.generate_id().map_err(|e| self.fail(e))?;
        let event = Event {
            seq,
            at_ms,
            kind: kind.to_owned(),
            workload: workload.map(str::to_owned),
            message: message.to_owned(),
        };
        self.events
            .insert(seq.to_be_bytes(), tree::encode(&event)?)
            .map_err(|e| self.fail(e))?;
        let mut len = self.events_len.fetch_add(1, Ordering::SeqCst) + 1;
        while len > self.options.max_events {
            if self.events.pop_min().map_err(|e| self.fail(e))?.is_none() {
                break;
            }
            len = self.events_len.fetch_sub(1, Ordering::SeqCst) - 1;
        }
        Ok(event)
    }

    /// The newest `limit` audit events, oldest first.
    pub fn events(&self, limit: usize) -> Result<Vec<Event>> {
        let mut newest: Vec<Event> = self
            .events
            .iter()
            .rev()
            .take(limit)
            .map(|entry| {
                let (key, raw) = entry.map_err(|e| self.fail(e))?;
                tree::decode(EVENTS_TREE, &key, &raw)
            })
            .collect::<Result<_>>()?;
        newest.reverse();
        Ok(newest)
    }

    /// Makes every write so far durable, and counts it as acknowledged. Call it before
    /// acknowledging anything another process or node will rely on. The disk work runs on
    /// sled's own threads, so awaiting it does not block an async runtime's worker.
    pub async fn flush(&self) -> Result<()> {
        self.bump_generation()?;
        self.db.flush_async().await.map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// [`Store::flush`] for synchronous callers.
    pub fn flush_blocking(&self) -> Result<()> {
        self.bump_generation()?;
        self.db.flush().map_err(|e| self.fail(e))?;
        Ok(())
    }

    fn bump_generation(&self) -> Result<()> {
        let next = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.db
            .fetch_and_update(GENERATION_KEY, |old| {
                let old = old
                    .and_then(|raw| raw.try_into().ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                Some(old.max(next).to_be_bytes().to_vec())
            })
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Flushes and records the generation reached, so that the next open can tell whether
    /// the files lost acknowledged writes while the agent was stopped. Call it on a clean
    /// shutdown.
    pub fn close(&self) -> Result<()> {
        self.flush_blocking()?;
        let generation = self.generation.load(Ordering::SeqCst);
        let target = self.path.join(CLOSED_AT_FILE);
        let partial = self.path.join(format!("{CLOSED_AT_FILE}.partial"));
        let io = |source: std::io::Error| classify(&self.path, sled::Error::Io(source));
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&partial).map_err(io)?;
            writeln!(file, "{generation}").map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&partial, &target).map_err(io)?;
        Ok(())
    }
}

/// Opens sled, turning its failure modes into errors that say what to do: a lock held by
/// another process, and corruption, which sled 0.34 sometimes reports by panicking.
fn open_sled(path: &Path) -> Result<sled::Db> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let attempt =
            std::panic::catch_unwind(AssertUnwindSafe(|| sled::Config::new().path(path).open()));
        match attempt {
            Ok(Ok(db)) => return Ok(db),
            Ok(Err(sled::Error::Io(e))) if e.to_string().contains("could not acquire lock") => {
                if Instant::now() >= deadline {
                    return Err(StoreError::Locked {
                        path: path.to_path_buf(),
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(Err(e @ sled::Error::Corruption { .. })) => return Err(classify(path, e)),
            Ok(Err(sled::Error::Io(e))) if e.kind() == std::io::ErrorKind::StorageFull => {
                return Err(StoreError::DiskFull {
                    path: path.to_path_buf(),
                });
            }
            Ok(Err(e @ sled::Error::Io(_))) => {
                return Err(StoreError::Open {
                    path: path.to_path_buf(),
                    source: e,
                });
            }
            Ok(Err(other)) => {
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    reason: other.to_string(),
                });
            }
            Err(panic) => {
                let reason = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "sled panicked while reading it".to_owned());
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    reason,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
