//! Crash safety: a child process writes through the store API in a loop and is killed
//! with SIGKILL at random moments, hundreds of times over the same store. After every
//! kill the store is reopened and checked: nothing acknowledged as flushed is lost, and no
//! transaction is half-applied.
//!
//! The child is this test binary itself, re-run with `PARLEY_CRASH_CHILD` set, so no
//! extra binary is needed. `PARLEY_CRASH_KILLS` sets the number of kills (default 200);
//! `PARLEY_CRASH_SEED` replays a run.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parley_store::records::{Reservation, instance_key};
use parley_store::{Store, StoreOptions};

const MAX_EVENTS: usize = 64;
/// Far enough ahead that no reservation expires during the test.
const NEVER_MS: u64 = u64::MAX / 2;

/// What the child did with operation `i` before acknowledging it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Reserved, then accepted: an instance exists, the reservation is gone.
    Accepted,
    /// Reserved, then released: neither exists.
    Released,
    /// Reserved and still held.
    Held,
}

impl Op {
    fn for_index(i: u64) -> Self {
        match i % 3 {
            0 => Self::Accepted,
            1 => Self::Released,
            _ => Self::Held,
        }
    }
}

fn workload(i: u64) -> String {
    format!("default/w{i}")
}

fn reservation_id(i: u64) -> String {
    format!("r{i}")
}

fn options() -> StoreOptions {
    StoreOptions {
        max_events: MAX_EVENTS,
    }
}

/// The child's loop: one operation per index, each flushed and then acknowledged on
/// stdout. It runs until killed.
fn child(path: &Path, start: u64) {
    let store = Store::open_with(path, options()).expect("child: open the store");
    let mut out = std::io::stdout().lock();
    writeln!(out, "parley-crash ready").expect("child: write");
    out.flush().expect("child: flush stdout");
    for i in start.. {
        let reservation = Reservation {
            id: reservation_id(i),
            workload: workload(i),
            replica: 0,
            epoch: i,
            announcer: "announcer".to_owned(),
            cpu_millis: 100,
            memory_bytes: 1 << 20,
            expires_at_ms: NEVER_MS,
        };
        store.reserve(&reservation).expect("child: reserve");
        match Op::for_index(i) {
            Op::Accepted => {
                store
                    .accept(&reservation.id, "node", 1)
                    .expect("child: accept");
            }
            Op::Released => {
                assert!(store.release(&reservation.id).expect("child: release"));
            }
            Op::Held => {}
        }
        store
            .record_event(i, "op", Some(&reservation.workload), "crash test")
            .expect("child: event");
        store.flush_blocking().expect("child: flush");
        writeln!(out, "parley-crash ack {i}").expect("child: write");
        out.flush().expect("child: flush stdout");
    }
}

#[test]
fn child_writer() {
    // Only does something when started by `survives_hundreds_of_sigkills`.
    if let (Ok(path), Ok(start)) = (
        std::env::var("PARLEY_CRASH_CHILD"),
        std::env::var("PARLEY_CRASH_START"),
    ) {
        child(Path::new(&path), start.parse().expect("start index"));
    }
}

/// A small deterministic generator, so that a failing run can be replayed by its seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Checks the reopened store against everything acknowledged so far and against the
/// atomicity rule for everything else.
fn verify(store: &Store, acked: &BTreeMap<u64, Op>, attempted_up_to: u64, context: &str) {
    let reservations = store.reservations().expect("reservations tree");
    let instances = store.instances().expect("instances tree");
    for i in 0..attempted_up_to {
        let held = reservations
            .get(&reservation_id(i))
            .unwrap_or_else(|e| panic!("{context}: reservation r{i} unreadable: {e}"))
            .is_some();
        let instance = instances
            .get(&instance_key(&workload(i), 0))
            .unwrap_or_else(|e| panic!("{context}: instance w{i} unreadable: {e}"));
        assert!(
            !(held && instance.is_some()),
            "{context}: op {i} is half-applied: both the reservation and the instance exist"
        );
        if let Some(instance) = &instance {
            assert_eq!(
                instance.epoch, i,
                "{context}: instance w{i} has the wrong epoch"
            );
        }
        match acked.get(&i) {
            Some(Op::Accepted) => assert!(
                instance.is_some() && !held,
                "{context}: acknowledged accept {i} lost (instance: {instance:?}, reservation held: {held})"
            ),
            Some(Op::Released) => assert!(
                instance.is_none() && !held,
                "{context}: acknowledged release {i} undone"
            ),
            Some(Op::Held) => assert!(
                held && instance.is_none(),
                "{context}: acknowledged reservation {i} lost"
            ),
            None => {}
        }
    }
    let events = store.events(usize::MAX).expect("events");
    assert!(
        events.len() <= MAX_EVENTS + 1,
        "{context}: {} events kept",
        events.len()
    );
}

#[test]
fn survives_hundreds_of_sigkills() {
    let kills: u32 = std::env::var("PARLEY_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("PARLEY_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(
            #[allow(clippy::disallowed_methods)]
            || {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            },
        );
    eprintln!("crash test: {kills} kills, PARLEY_CRASH_SEED={seed}");
    let mut rng = SplitMix(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let exe = std::env::current_exe().expect("test binary path");

    let mut acked: BTreeMap<u64, Op> = BTreeMap::new();
    let mut next_start = 0u64;
    let started = Instant::now();
    for kill in 0..kills {
        // Each child starts on fresh indices, far past anything an earlier one reached.
        let start = next_start;
        let mut child = Command::new(&exe)
            .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
            .env("PARLEY_CRASH_CHILD", &path)
            .env("PARLEY_CRASH_START", start.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the writer");
        let stdout = child.stdout.take().expect("child stdout");
        let (lines_tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        // The test harness prints its own lines first; wait for the writer's.
        loop {
            match lines.recv_timeout(Duration::from_secs(30)) {
                // libtest may have written "test child_writer ... " on the same line.
                Ok(line) if line.ends_with("parley-crash ready") => break,
                Ok(_) => {}
                Err(e) => panic!("kill {kill}: the writer did not start: {e} (seed {seed})"),
            }
        }
        // Kill somewhere between a few milliseconds and ~60 ms into the writing.
        std::thread::sleep(Duration::from_micros(2_000 + rng.next() % 60_000));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("SIGKILL the writer");
        child.wait().expect("reap the writer");
        reader.join().expect("reader thread");
        let mut highest = start;
        for line in lines.try_iter() {
            if let Some(i) = line
                .strip_prefix("parley-crash ack ")
                .and_then(|i| i.parse::<u64>().ok())
            {
                acked.insert(i, Op::for_index(i));
                highest = highest.max(i + 1);
            }
        }
        // The writer may have attempted one operation past its last acknowledgement.
        let attempted_up_to = highest + 1;
        next_start = attempted_up_to + 1;

        let store = Store::open_with(&path, options()).unwrap_or_else(|e| {
            panic!("kill {kill}: the store does not reopen: {e} (seed {seed})")
        });
        verify(
            &store,
            &acked,
            attempted_up_to,
            &format!("kill {kill} (seed {seed})"),
        );
    }
    assert!(
        acked.len() as u32 > kills,
        "the writer acknowledged only {} operations over {kills} runs; the test proves little",
        acked.len()
    );
    eprintln!(
        "crash test: {kills} kills, {} acknowledged operations verified, {:.1} s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
}
