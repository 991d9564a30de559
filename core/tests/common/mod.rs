//! Helpers shared by herald-core's test binaries.

use std::thread;
use std::time::{Duration, Instant};

/// Drives the epoch collector until `done()` holds or 20 s have passed, and returns whether
/// it held. Overwritten entries wait in their publishing thread's limbo, which dropping the
/// `Publisher` hands to the collector; it frees them once every thread pinned before that
/// has unpinned (another test's thread may be pinned a while, e.g. while a panic hook
/// prints a backtrace inside a borrow closure). The caller asserts on what it waited for.
pub fn collect_until(done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() && Instant::now() < deadline {
        crossbeam_epoch::pin().flush();
        thread::yield_now();
    }
    done()
}
