use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Spec {
    image: String,
}

fn spec(image: &str) -> Spec {
    Spec {
        image: image.to_owned(),
    }
}

fn reservation(id: &str, replica: u32, epoch: u64, expires_at_ms: u64) -> Reservation {
    Reservation {
        id: id.to_owned(),
        workload: "default/web".to_owned(),
        replica,
        epoch,
        announcer: "node-a".to_owned(),
        cpu_millis: 500,
        memory_bytes: 64 << 20,
        expires_at_ms,
    }
}

#[test]
fn insert_new_refuses_an_existing_key_and_keeps_the_first_value() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let tree = store.workloads::<Spec>().unwrap();
    assert!(tree.insert_new("default/web", &spec("a")).unwrap());
    assert!(!tree.insert_new("default/web", &spec("b")).unwrap());
    assert_eq!(tree.get("default/web").unwrap(), Some(spec("a")));
    assert_eq!(tree.len(), 1);
}

#[test]
fn values_survive_a_reopen_after_flush() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let tree = store.workloads::<Spec>().unwrap();
        tree.put("default/one", &spec("x")).unwrap();
        tree.put("default/two", &spec("y")).unwrap();
        assert!(tree.remove("default/one").unwrap());
        store.close().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let tree = store.workloads::<Spec>().unwrap();
    assert_eq!(
        tree.list().unwrap(),
        vec![("default/two".to_owned(), spec("y"))]
    );
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
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&dir.path().display().to_string()));
}

/// Writes a store exactly as the schema-1 build (the single-node skeleton) did.
fn write_v1_store(path: &Path) {
    let db = sled::open(path).unwrap();
    db.insert(SCHEMA_KEY, &1u32.to_be_bytes()).unwrap();
    let workloads = db.open_tree(WORKLOADS_TREE).unwrap();
    for name in ["web", "api"] {
        let record = serde_json::json!({
            "v": 1,
            "data": { "spec": { "name": name, "image": "busybox", "command": [], "env": [] }, "created_at": 1 }
        });
        workloads
            .insert(name, serde_json::to_vec(&record).unwrap())
            .unwrap();
    }
    db.flush().unwrap();
}

#[test]
fn a_schema_1_store_is_migrated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    write_v1_store(dir.path());

    let store = Store::open(dir.path()).unwrap();
    let workloads = store.workloads::<serde_json::Value>().unwrap();
    let keys: Vec<String> = workloads
        .list()
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["default/api", "default/web"]);
    let web = workloads.get("default/web").unwrap().unwrap();
    assert_eq!(web["spec"]["image"], "busybox");
    // The records were rewritten in the current envelope, and the version recorded.
    let raw = store
        .db
        .open_tree(WORKLOADS_TREE)
        .unwrap()
        .get("default/web")
        .unwrap()
        .unwrap();
    let envelope: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(envelope["v"], SCHEMA_VERSION);
    let version = store.db.get(SCHEMA_KEY).unwrap().unwrap();
    assert_eq!(version.as_ref(), SCHEMA_VERSION.to_be_bytes());
    drop((store, workloads));
    // Opening again finds nothing left to migrate.
    let again = Store::open(dir.path()).unwrap();
    assert_eq!(again.workloads::<serde_json::Value>().unwrap().len(), 2);
}

#[test]
fn an_undecodable_record_is_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .db
        .open_tree(WORKLOADS_TREE)
        .unwrap()
        .insert("default/web", &b"{not json"[..])
        .unwrap();
    let tree = store.workloads::<Spec>().unwrap();
    let err = tree.list().unwrap_err();
    assert!(
        err.to_string().contains("corrupt record \"default/web\""),
        "{err}"
    );
}

#[test]
fn a_second_open_of_the_same_directory_says_who_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("another parley agent"), "{err}");
}

#[test]
fn accepting_an_award_turns_the_reservation_into_an_instance() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.reserve(&reservation("r1", 0, 3, 10_000)).unwrap();
    let instance = store.accept("r1", "node-b", 5_000).unwrap();
    assert_eq!(instance.epoch, 3);
    assert_eq!(instance.node, "node-b");
    assert_eq!(instance.memory_bytes, 64 << 20);
    assert!(store.reservations().unwrap().is_empty());
    assert_eq!(
        store.instances().unwrap().get(&instance.key()).unwrap(),
        Some(instance)
    );
    // The award cannot be accepted twice.
    let err = store.accept("r1", "node-b", 5_001).unwrap_err();
    assert!(
        matches!(err, StoreError::UnknownReservation { .. }),
        "{err}"
    );
}

#[test]
fn refused_accepts_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.reserve(&reservation("new", 0, 5, 10_000)).unwrap();
    store.accept("new", "node-b", 1_000).unwrap();

    // An older epoch for the same replica is stale, and its reservation stays held
    // (the caller releases it explicitly).
    store.reserve(&reservation("old", 0, 4, 10_000)).unwrap();
    let err = store.accept("old", "node-b", 1_000).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::StaleEpoch {
                held: 5,
                offered: 4,
                ..
            }
        ),
        "{err}"
    );
    assert!(store.reservations().unwrap().get("old").unwrap().is_some());

    // An expired reservation cannot be accepted.
    store.reserve(&reservation("late", 1, 5, 2_000)).unwrap();
    let err = store.accept("late", "node-b", 2_000).unwrap_err();
    assert!(
        matches!(err, StoreError::ReservationExpired { .. }),
        "{err}"
    );
    assert_eq!(store.instances().unwrap().len(), 1);

    // A duplicate reservation id is refused.
    let err = store
        .reserve(&reservation("late", 2, 5, 9_000))
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateReservation { .. }),
        "{err}"
    );
}

#[test]
fn release_and_expiry_free_reservations() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.reserve(&reservation("a", 0, 1, 1_000)).unwrap();
    store.reserve(&reservation("b", 1, 1, 2_000)).unwrap();
    store.reserve(&reservation("c", 2, 1, 3_000)).unwrap();
    assert!(store.release("c").unwrap());
    assert!(!store.release("c").unwrap());
    let expired = store.expire_reservations(1_500).unwrap();
    assert_eq!(
        expired.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["a"]
    );
    let left: Vec<String> = store
        .reservations()
        .unwrap()
        .list()
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(left, ["b"]);
}

#[test]
fn the_audit_log_keeps_only_the_newest_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), StoreOptions { max_events: 5 }).unwrap();
    for i in 0..12u64 {
        store
            .record_event(i, "test", Some("default/web"), &format!("event {i}"))
            .unwrap();
    }
    let events = store.events(100).unwrap();
    let messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        ["event 7", "event 8", "event 9", "event 10", "event 11"]
    );
    assert_eq!(store.events(2).unwrap().len(), 2);
    assert_eq!(store.events(2).unwrap()[1].message, "event 11");
}

#[test]
fn a_store_replaced_by_an_older_copy_is_reported_as_having_lost_writes() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("store");
    let backup = dir.path().join("backup");
    {
        let store = Store::open(&live).unwrap();
        store
            .workloads::<Spec>()
            .unwrap()
            .put("default/a", &spec("a"))
            .unwrap();
        store.close().unwrap();
    }
    copy_dir(&live, &backup);
    {
        let store = Store::open(&live).unwrap();
        store
            .workloads::<Spec>()
            .unwrap()
            .put("default/b", &spec("b"))
            .unwrap();
        store.flush_blocking().unwrap();
        store.close().unwrap();
    }
    // Put the old files back under the newer close record.
    for file in ["db", "conf"] {
        std::fs::copy(backup.join(file), live.join(file)).unwrap();
    }
    let err = Store::open(&live).unwrap_err();
    assert!(matches!(err, StoreError::LostWrites { .. }), "{err}");
    assert!(err.to_string().contains("--reset-state"), "{err}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}
