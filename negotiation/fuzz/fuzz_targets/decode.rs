//! Feeds arbitrary bytes to the frame decoder: it must return an error or a message,
//! never panic, hang or allocate beyond the frame limit.
//!
//!     cd negotiation/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run decode
#![no_main]

use libfuzzer_sys::fuzz_target;
use parley_negotiation::codec::{self, ReplayGuard};
use parley_negotiation::testing::ChecksumVerifier;

fuzz_target!(|frame: &[u8]| {
    let verifier = ChecksumVerifier { seed: 7 };
    let _ = codec::decode_frame(frame, &verifier, &mut ReplayGuard::default(), 1_800_000_000_000, 30_000);
});
