//! Typed views of sled trees.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Result, SCHEMA_VERSION, StoreError, classify};

/// The versioned envelope around every stored value: `{"v": schema, "data": value}`.
#[derive(Serialize, Deserialize)]
pub(crate) struct Envelope<T> {
    /// Schema version the value was written with.
    pub(crate) v: u32,
    pub(crate) data: T,
}

/// Encodes `value` in the current envelope.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(&Envelope {
        v: SCHEMA_VERSION,
        data: value,
    })
    .map_err(|e| StoreError::Record {
        tree: String::new(),
        key: String::new(),
        reason: format!("cannot encode value: {e}"),
    })
}

/// Decodes a value from its envelope, naming the record if it cannot.
pub(crate) fn decode<T: DeserializeOwned>(tree: &str, key: &[u8], raw: &[u8]) -> Result<T> {
    serde_json::from_slice::<Envelope<T>>(raw)
        .map(|envelope| envelope.data)
        .map_err(|e| StoreError::Record {
            tree: tree.to_owned(),
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        })
}

/// A typed view of one sled tree: string keys, values of type `T`.
#[derive(Clone, Debug)]
pub struct Tree<T> {
    pub(crate) inner: sled::Tree,
    pub(crate) name: &'static str,
    pub(crate) store_path: Arc<std::path::Path>,
    pub(crate) _value: PhantomData<fn() -> T>,
}

impl<T> Tree<T>
where
    T: Serialize + DeserializeOwned,
{
    fn fail(&self, error: sled::Error) -> StoreError {
        classify(&self.store_path, error)
    }

    /// Inserts `value` under `key` only if the key is absent. Returns `false`, changing
    /// nothing, when the key already exists.
    pub fn insert_new(&self, key: &str, value: &T) -> Result<bool> {
        let encoded = encode(value)?;
        let swapped = self
            .inner
            .compare_and_swap(key, None::<&[u8]>, Some(encoded))
            .map_err(|e| self.fail(e))?;
        Ok(swapped.is_ok())
    }

    /// Inserts or replaces the value under `key`.
    pub fn put(&self, key: &str, value: &T) -> Result<()> {
        self.inner
            .insert(key, encode(value)?)
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<T>> {
        self.inner
            .get(key)
            .map_err(|e| self.fail(e))?
            .map(|raw| decode(self.name, key.as_bytes(), &raw))
            .transpose()
    }

    /// Removes `key`; returns whether it was present.
    pub fn remove(&self, key: &str) -> Result<bool> {
        Ok(self.inner.remove(key).map_err(|e| self.fail(e))?.is_some())
    }

    /// All entries in key order. A record that cannot be decoded fails the whole listing:
    /// silently hiding part of the desired state would make the agent act on a lie.
    pub fn list(&self) -> Result<Vec<(String, T)>> {
        self.list_prefix("")
    }

    /// Entries whose key starts with `prefix`, in key order.
    pub fn list_prefix(&self, prefix: &str) -> Result<Vec<(String, T)>> {
        self.inner
            .scan_prefix(prefix)
            .map(|entry| {
                let (key, raw) = entry.map_err(|e| self.fail(e))?;
                let value = decode(self.name, &key, &raw)?;
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
