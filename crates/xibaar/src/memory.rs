//! Memory the allocator keeps for threads that have gone idle.

use std::{
    cell::Cell,
    time::{Duration, Instant},
};

/// How often at most a runtime worker gives back what its allocator holds free.
const AT_MOST_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static LAST_GIVEN_BACK: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Run by each runtime worker as it parks (nothing left to run), at most once a second per
/// thread: mimalloc gives back to the system the pages this thread freed whose delayed purge is
/// due. It purges freed pages only when the thread that freed them allocates or frees again,
/// so a worker that goes quiet after a burst (ten thousand live streams opening, each with its
/// short-lived request buffers) kept them resident: the api held 5.4–8.8 KB per idle stream
/// from run to run instead of about 4 (docs/benchmarks.md). Purging at once instead
/// (`MIMALLOC_PURGE_DELAY=0`) did the same for the streams but nearly doubled the api's CPU per
/// send under load; here a busy worker pays one clock read per park.
pub fn give_back_when_idle() {
    LAST_GIVEN_BACK.with(|last| {
        let now = Instant::now();
        if last
            .get()
            .is_some_and(|at| now.duration_since(at) < AT_MOST_EVERY)
        {
            return;
        }
        last.set(Some(now));
        // SAFETY: `mi_collect` takes no pointer and has no precondition; it works on the
        // calling thread's heap and on mimalloc's shared arenas under their own locks.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_collect(false)
        };
    });
}
