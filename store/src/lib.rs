//! Parley's durable state, kept in sled.
//!
//! This is the only crate that imports sled. Callers see typed trees ([`Tree`]) whose
//! values are serde types wrapped in a small versioned envelope, so that a future schema
//! change can tell old records from new ones. Anything another party will rely on is
//! flushed before it is acknowledged ([`Store::flush`]).

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Schema version written by this build. A store with a newer version is refused rather
/// than misread.
pub const SCHEMA_VERSION: u32 = 1;

/// Key in the default tree that records the store's schema version.
const SCHEMA_KEY: &[u8] = b"parley.schema_version";

/// Name of the tree holding desired workload specs.
const WORKLOADS_TREE: &str = "workloads";

/// What went wrong with the store. Messages name the path or the record so a user can act.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened: missing permissions, a lock held by another agent,
    /// or files sled cannot read.
    #[error(
        "cannot open the state store at {path}: {source}; if another parley agent uses this \
         data directory, stop it or pass a different --data-dir"
    )]
    Open {
        /// The store directory.
        path: PathBuf,
        /// The underlying sled error.
        #[source]
        source: sled::Error,
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
    Corrupt {
        /// Tree holding the record.
        tree: String,
        /// Key of the record, lossily decoded.
        key: String,
        /// Why it could not be decoded.
        reason: String,
    },
    /// A read, write or flush failed (for example a full disk).
    #[error("state store I/O failed: {0}")]
    Io(#[from] sled::Error),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The versioned envelope around every stored value.
#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    /// Schema version the value was written with.
    v: u32,
    data: T,
}

/// An open store. Cheap to clone; all clones share one sled database.
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the store in directory `path` and checks its schema version.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let db = open_with_lock_retry(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        let store = Self { db, path };
        store.check_schema()?;
        Ok(store)
    }

    fn check_schema(&self) -> Result<()> {
        match self.db.get(SCHEMA_KEY)? {
            None => {
                self.db.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
                self.db.flush()?;
                Ok(())
            }
            Some(raw) => {
                let bytes: [u8; 4] = raw.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    tree: "default".to_owned(),
                    key: String::from_utf8_lossy(SCHEMA_KEY).into_owned(),
                    reason: format!("expected 4 bytes, found {}", raw.len()),
                })?;
                let found = u32::from_be_bytes(bytes);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::SchemaTooNew {
                        path: self.path.clone(),
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                Ok(())
            }
        }
    }

    /// The directory this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tree of desired workloads, keyed by workload name.
    pub fn workloads<T>(&self) -> Result<Tree<T>>
    where
        T: Serialize + DeserializeOwned,
    {
        self.tree(WORKLOADS_TREE)
    }

    fn tree<T>(&self, name: &str) -> Result<Tree<T>>
    where
        T: Serialize + DeserializeOwned,
    {
        Ok(Tree {
            inner: self.db.open_tree(name)?,
            name: name.to_owned(),
            _value: PhantomData,
        })
    }

    /// Writes everything buffered to disk. Call it before acknowledging anything that
    /// another process or node will rely on. It runs on sled's own flusher rather than the
    /// caller's thread, so awaiting it does not block an async runtime's worker.
    pub async fn flush(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Flushes synchronously; for shutdown paths and tests.
    pub fn flush_blocking(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

/// How long [`Store::open`] waits for a file lock still held by a store that was just
/// dropped in this process: sled's background flusher releases it shortly after the last
/// handle goes away. A lock held by another process is reported after this time.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn open_with_lock_retry(path: &Path) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new().path(path).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// A typed view of one sled tree: string keys, values of type `T`.
#[derive(Clone, Debug)]
pub struct Tree<T> {
    inner: sled::Tree,
    name: String,
    _value: PhantomData<fn() -> T>,
}

impl<T> Tree<T>
where
    T: Serialize + DeserializeOwned,
{
    fn encode(value: &T) -> Result<Vec<u8>> {
        let envelope = Envelope {
            v: SCHEMA_VERSION,
            data: value,
        };
        // Serializing plain data structs to JSON cannot fail; map it anyway rather than panic.
        serde_json::to_vec(&envelope).map_err(|e| StoreError::Corrupt {
            tree: String::new(),
            key: String::new(),
            reason: format!("cannot encode value: {e}"),
        })
    }

    fn decode(&self, key: &[u8], raw: &[u8]) -> Result<T> {
        let envelope: Envelope<T> =
            serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt {
                tree: self.name.clone(),
                key: String::from_utf8_lossy(key).into_owned(),
                reason: e.to_string(),
            })?;
        Ok(envelope.data)
    }

    /// Inserts `value` under `key` only if the key is absent. Returns `false`, changing
    /// nothing, when the key already exists.
    pub fn insert_new(&self, key: &str, value: &T) -> Result<bool> {
        let encoded = Self::encode(value)?;
        let swapped = self
            .inner
            .compare_and_swap(key, None::<&[u8]>, Some(encoded))?;
        Ok(swapped.is_ok())
    }

    /// Inserts or replaces the value under `key`.
    pub fn put(&self, key: &str, value: &T) -> Result<()> {
        self.inner.insert(key, Self::encode(value)?)?;
        Ok(())
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<T>> {
        self.inner
            .get(key)?
            .map(|raw| self.decode(key.as_bytes(), &raw))
            .transpose()
    }

    /// Removes `key`; returns whether it was present.
    pub fn remove(&self, key: &str) -> Result<bool> {
        Ok(self.inner.remove(key)?.is_some())
    }

    /// All entries in key order. A record that cannot be decoded fails the whole listing:
    /// silently hiding part of the desired state would make the agent delete containers.
    pub fn list(&self) -> Result<Vec<(String, T)>> {
        self.inner
            .iter()
            .map(|entry| {
                let (key, raw) = entry?;
                let value = self.decode(&key, &raw)?;
                Ok((String::from_utf8_lossy(&key).into_owned(), value))
            })
            .collect()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Record {
        image: String,
    }

    fn record(image: &str) -> Record {
        Record {
            image: image.to_owned(),
        }
    }

    #[test]
    fn insert_new_refuses_an_existing_key_and_keeps_the_first_value() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tree = store.workloads::<Record>().unwrap();
        assert!(tree.insert_new("web", &record("a")).unwrap());
        assert!(!tree.insert_new("web", &record("b")).unwrap());
        assert_eq!(tree.get("web").unwrap(), Some(record("a")));
        assert_eq!(tree.len(), 1);
    }

    #[test]
    fn values_survive_a_reopen_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let tree = store.workloads::<Record>().unwrap();
            tree.put("one", &record("x")).unwrap();
            tree.put("two", &record("y")).unwrap();
            assert!(tree.remove("one").unwrap());
            store.flush_blocking().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let tree = store.workloads::<Record>().unwrap();
        assert_eq!(tree.list().unwrap(), vec![("two".to_owned(), record("y"))]);
    }

    #[test]
    fn a_newer_schema_is_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.insert(SCHEMA_KEY, &(SCHEMA_VERSION + 1).to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::SchemaTooNew { found: 2, .. }));
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }

    #[test]
    fn an_undecodable_record_is_reported_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .db
            .open_tree(WORKLOADS_TREE)
            .unwrap()
            .insert("web", &b"{not json"[..])
            .unwrap();
        let tree = store.workloads::<Record>().unwrap();
        let err = tree.list().unwrap_err();
        assert!(err.to_string().contains("corrupt record \"web\""), "{err}");
    }

    #[test]
    fn a_second_open_of_the_same_directory_says_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("another parley agent"), "{err}");
    }
}
