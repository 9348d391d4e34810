//! A damaged store is reported with its path and the way out, never with a panic and never
//! by silently serving less than was acknowledged.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use parley_store::{Store, StoreError};

const RECORDS: usize = 2_000;

/// A cleanly closed store holding `RECORDS` workloads.
fn healthy_store(path: &Path) {
    let store = Store::open(path).expect("open");
    let workloads = store.workloads::<String>().expect("tree");
    for i in 0..RECORDS {
        workloads
            .put(
                &format!("default/w{i:05}"),
                &format!("image-{i}-{}", "x".repeat(100)),
            )
            .expect("put");
        if i % 100 == 0 {
            store.flush_blocking().expect("flush");
        }
    }
    store.close().expect("close");
}

/// Opening must either fail with an error naming the path and `--reset-state`, or
/// succeed with every record intact.
fn assert_reported_or_intact(path: &Path, damage: &str) {
    match Store::open(path) {
        Err(error) => {
            let message = error.to_string();
            eprintln!("{damage}: {message}");
            assert!(
                matches!(
                    error,
                    StoreError::Corrupt { .. } | StoreError::LostWrites { .. }
                ),
                "{damage}: unexpected error kind: {message}"
            );
            assert!(
                message.contains(&path.display().to_string()),
                "{damage}: {message}"
            );
            assert!(
                message.contains("parley agent --reset-state"),
                "{damage}: {message}"
            );
        }
        Ok(store) => {
            eprintln!("{damage}: opened, checking every record");
            let records = store
                .workloads::<String>()
                .and_then(|w| w.list())
                .unwrap_or_else(|e| panic!("{damage}: opened, but records are unreadable: {e}"));
            assert_eq!(
                records.len(),
                RECORDS,
                "{damage}: opened with records missing"
            );
            for (i, (key, value)) in records.iter().enumerate() {
                assert_eq!(key, &format!("default/w{i:05}"), "{damage}");
                assert!(
                    value.starts_with(&format!("image-{i}-")),
                    "{damage}: {key} = {value}"
                );
            }
        }
    }
}

fn overwrite(file: &Path, seed: u64, chunks: usize) {
    let len = std::fs::metadata(file).expect("metadata").len();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("open for write");
    let mut state = seed;
    for _ in 0..chunks {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let offset = (state >> 16) % len.saturating_sub(64).max(1);
        f.seek(SeekFrom::Start(offset)).expect("seek");
        let garbage: Vec<u8> = (0..64u8)
            .map(|b| b.wrapping_mul(37) ^ (state as u8))
            .collect();
        f.write_all(&garbage).expect("write");
    }
    f.sync_all().expect("sync");
}

#[test]
fn garbled_data_files_are_reported() {
    for seed in 1..=6u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        healthy_store(&path);
        overwrite(&path.join("db"), seed, 40);
        assert_reported_or_intact(&path, &format!("garbled db, seed {seed}"));
    }
}

#[test]
fn truncated_data_files_are_reported() {
    for keep in [0.0, 0.1, 0.5, 0.9] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        healthy_store(&path);
        let db = path.join("db");
        let len = std::fs::metadata(&db).expect("metadata").len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&db)
            .expect("open");
        f.set_len((len as f64 * keep) as u64).expect("truncate");
        drop(f);
        let damage = format!("db truncated to {:.0}%", keep * 100.0);
        let result = Store::open(&path);
        // Losing acknowledged records must never pass unnoticed.
        assert!(result.is_err(), "{damage}: opened as if nothing happened");
        drop(result);
        assert_reported_or_intact(&path, &damage);
    }
}

#[test]
fn a_garbled_config_file_is_reported_or_harmless() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    healthy_store(&path);
    std::fs::write(path.join("conf"), b"\x00\xffnot a sled config\n").expect("write");
    assert_reported_or_intact(&path, "garbled conf");
}
