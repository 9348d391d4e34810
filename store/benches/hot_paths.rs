//! The agent's store hot paths: reserve, accept, release, each with and without the
//! flush that precedes an acknowledgement. Raw sled inserts of the same size, measured in
//! the same run, are the baseline.
//!
//!     cargo bench -p parley-store --bench hot_paths

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use parley_store::Store;
use parley_store::records::Reservation;

static NEXT: AtomicU64 = AtomicU64::new(0);

fn reservation() -> Reservation {
    let i = NEXT.fetch_add(1, Ordering::Relaxed);
    Reservation {
        id: format!("r{i:016}"),
        workload: format!("default/bench-{}", i % 1000),
        replica: (i % 7) as u32,
        epoch: i,
        announcer: "node-announcer-0001".to_owned(),
        cpu_millis: 250,
        memory_bytes: 128 << 20,
        expires_at_ms: u64::MAX / 2,
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("store")).expect("open");
    let raw = sled::open(dir.path().join("raw")).expect("open raw sled");
    let payload = serde_json::to_vec(&reservation()).expect("encode");

    let mut group = c.benchmark_group("store");
    group.bench_function("baseline: raw sled insert", |b| {
        b.iter(|| {
            let key = NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes();
            raw.insert(key, payload.as_slice()).expect("insert");
        })
    });
    group.bench_function("reserve", |b| {
        b.iter(|| store.reserve(black_box(&reservation())).expect("reserve"))
    });
    group.bench_function("reserve + accept", |b| {
        b.iter(|| {
            let r = reservation();
            store.reserve(&r).expect("reserve");
            store.accept(&r.id, "node-b", 1).expect("accept")
        })
    });
    group.bench_function("reserve + release", |b| {
        b.iter(|| {
            let r = reservation();
            store.reserve(&r).expect("reserve");
            store.release(&r.id).expect("release")
        })
    });

    group.bench_function("baseline: raw sled insert + flush", |b| {
        b.iter(|| {
            let key = NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes();
            raw.insert(key, payload.as_slice()).expect("insert");
            raw.flush().expect("flush");
        })
    });
    group.bench_function("reserve + flush", |b| {
        b.iter(|| {
            store.reserve(&reservation()).expect("reserve");
            store.flush_blocking().expect("flush");
        })
    });
    group.bench_function("reserve + accept + flush", |b| {
        b.iter(|| {
            let r = reservation();
            store.reserve(&r).expect("reserve");
            store.accept(&r.id, "node-b", 1).expect("accept");
            store.flush_blocking().expect("flush");
        })
    });
    group.bench_function("reserve + release + flush", |b| {
        b.iter(|| {
            let r = reservation();
            store.reserve(&r).expect("reserve");
            store.release(&r.id).expect("release");
            store.flush_blocking().expect("flush");
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
