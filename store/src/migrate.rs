//! Schema migrations, run by [`crate::Store::open`] on a store written by an older Parley.
//!
//! Each step takes the store from version `n` to `n + 1` inside one sled transaction that
//! also records the new version, so a crash mid-migration leaves either the old or the new
//! schema, never a mix.

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::tree::{Envelope, encode};
use crate::{DEFAULT_NAMESPACE, Result, SCHEMA_KEY, StoreError, WORKLOADS_TREE, classify};

/// Brings the store from schema `found` to the current one.
pub(crate) fn migrate(db: &sled::Db, path: &std::path::Path, found: u32) -> Result<()> {
    let mut version = found;
    while version < crate::SCHEMA_VERSION {
        match version {
            1 => v1_to_v2(db, path)?,
            other => {
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!("no migration from schema version {other}"),
                });
            }
        }
        version += 1;
        tracing::info!(path = %path.display(), version, "migrated the state store");
    }
    Ok(())
}

/// Version 1 (the single-node skeleton) keyed workloads by bare name. Version 2 keys them
/// `namespace/name`, as workload identities and authorization are per namespace; existing
/// workloads move to the default namespace.
fn v1_to_v2(db: &sled::Db, path: &std::path::Path) -> Result<()> {
    let workloads = db
        .open_tree(WORKLOADS_TREE)
        .map_err(|e| classify(path, e))?;
    let old: Vec<(sled::IVec, sled::IVec)> = workloads
        .iter()
        .collect::<sled::Result<_>>()
        .map_err(|e| classify(path, e))?;
    let mut rewritten = Vec::with_capacity(old.len());
    for (key, raw) in &old {
        let name = String::from_utf8_lossy(key);
        let envelope: Envelope<serde_json::Value> =
            serde_json::from_slice(raw).map_err(|e| StoreError::Record {
                tree: WORKLOADS_TREE.to_owned(),
                key: name.clone().into_owned(),
                reason: e.to_string(),
            })?;
        let new_key = if name.contains('/') {
            name.into_owned()
        } else {
            format!("{DEFAULT_NAMESPACE}/{name}")
        };
        rewritten.push((key.clone(), new_key, encode(&envelope.data)?));
    }

    let default: &sled::Tree = db;
    let outcome: std::result::Result<(), TransactionError<()>> =
        (default, &workloads).transaction(|(meta, workloads)| {
            for (old_key, new_key, value) in &rewritten {
                workloads.remove(old_key)?;
                workloads.insert(new_key.as_bytes(), value.as_slice())?;
            }
            meta.insert(SCHEMA_KEY, &2u32.to_be_bytes())?;
            Ok::<(), ConflictableTransactionError<()>>(())
        });
    match outcome {
        Ok(()) => {}
        Err(TransactionError::Storage(e)) => return Err(classify(path, e)),
        Err(TransactionError::Abort(())) => {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                reason: "the schema migration was aborted".to_owned(),
            });
        }
    }
    db.flush().map_err(|e| classify(path, e))?;
    Ok(())
}
