//! Runs every fuzz target (`parley_agent::fuzz`) over its corpus and seeds, then over
//! mutations of them for `PARLEY_FUZZ_SECS` seconds per target (default 15), two targets
//! at a time. A target that panics fails the test; the input is written to
//! `target/fuzz-failures/` and printed in hex, so it can be added to the corpus once
//! fixed. `PARLEY_FUZZ_SEED` changes the mutations (default: fixed, so runs replay).
//!
//! This is a mutation fuzzer without coverage feedback: it runs on stable Rust in every
//! CI run. The same targets can be driven by a coverage-guided fuzzer for deeper runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parley_agent::fuzz::{TARGETS, Target, seeds};

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
        Err(_) => default,
    }
}

/// xorshift64*: the mutations only need to be varied and replayable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Values that break parsers: boundaries of lengths and integers, format delimiters.
const INTERESTING: &[&[u8]] = &[
    &[0x00],
    &[0xff],
    &[0x7f, 0xff, 0xff, 0xff],
    &[0xff, 0xff, 0xff, 0xff],
    &[0x00, 0x01, 0x00, 0x00],
    &[0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[0x9f],
    &[0xbf],
    b"\"",
    b"{",
    b"[",
    b"]]]]",
    b"\\u0000",
    b"18446744073709551616",
    b"-1",
    b"=",
    b"[[allow]]",
    b"\n",
    b":",
];

fn mutate(input: &[u8], others: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(7) {
            0 if !data.is_empty() => {
                let at = rng.below(data.len());
                data[at] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let at = rng.below(data.len());
                data[at] = rng.next() as u8;
            }
            2 => {
                let at = rng.below(data.len() + 1);
                let value = INTERESTING[rng.below(INTERESTING.len())];
                data.splice(at..at, value.iter().copied());
            }
            3 if !data.is_empty() => {
                let start = rng.below(data.len());
                let end = (start + rng.below(16) + 1).min(data.len());
                data.drain(start..end);
            }
            4 if !data.is_empty() => {
                let start = rng.below(data.len());
                let end = (start + rng.below(64) + 1).min(data.len());
                let copy = data[start..end].to_vec();
                let at = rng.below(data.len() + 1);
                data.splice(at..at, copy);
            }
            5 => data.truncate(rng.below(data.len() + 1)),
            _ if !others.is_empty() => {
                let other = &others[rng.below(others.len())];
                let cut = rng.below(data.len() + 1);
                let from = rng.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            _ => {}
        }
    }
    data
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read(e.path()).ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    inputs.extend(seeds(target));
    assert!(
        !inputs.is_empty(),
        "fuzz target {target} has no corpus in {} and no seeds: add a valid input",
        dir.display()
    );
    inputs
}

/// Runs `target` until `budget` has passed; the panicking input, if any.
fn run(target: Target, budget: Duration, seed: u64) -> Result<usize, (Vec<u8>, String)> {
    let (name, function) = target;
    let inputs = corpus(name);
    let mut rng = Rng(seed
        ^ name
            .bytes()
            .fold(0x9E37_79B9_u64, |h, b| h.rotate_left(5) ^ u64::from(b))
        | 1);
    let deadline = Instant::now() + budget;
    let mut runs = 0;
    let mut try_one = |data: Vec<u8>| {
        runs += 1;
        std::panic::catch_unwind(|| function(&data)).map_err(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            (data.clone(), message)
        })
    };
    for input in &inputs {
        try_one(input.clone())?;
    }
    while Instant::now() < deadline {
        for _ in 0..64 {
            let base = &inputs[rng.below(inputs.len())];
            try_one(mutate(base, &inputs, &mut rng))?;
        }
    }
    Ok(runs)
}

fn save_failure(name: &str, data: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!(
        "{name}-{:016x}",
        data.iter()
            .fold(0u64, |h, b| h.rotate_left(7) ^ u64::from(*b))
    ));
    let _ = std::fs::write(&path, data);
    path
}

#[test]
fn every_decoder_survives_its_corpus_and_mutations_of_it() {
    let budget = Duration::from_secs(env_u64("PARLEY_FUZZ_SECS", 15));
    let seed = env_u64("PARLEY_FUZZ_SEED", 0x5EED_F022);
    // Panics are expected to be caught and reported once, not printed per input.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();
    for pair in TARGETS.chunks(2) {
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = pair
                .iter()
                .map(|target| scope.spawn(move || (target.0, run(*target, budget, seed))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a fuzz thread"))
                .collect()
        });
        for (name, result) in results {
            match result {
                Ok(runs) => println!("{name}: {runs} inputs, no failure"),
                Err((data, message)) => {
                    let path = save_failure(name, &data);
                    failures.push(format!(
                        "{name} panicked ({message}) on {} (saved to {}): {}",
                        data.len(),
                        path.display(),
                        data.iter().map(|b| format!("{b:02x}")).collect::<String>()
                    ));
                }
            }
        }
    }
    let _ = std::panic::take_hook();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
