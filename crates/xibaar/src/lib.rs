//! The `xibaar` binary's library: start-up of every role, shared by the subcommands, the
//! local runner and the integration tests.

pub mod cli;
mod commands;
pub mod memory;
mod report;
mod retention;
pub mod startup;

pub use startup::{Roles, run};

/// No transparent huge pages for this process (and the children it starts). mimalloc asks for
/// them on its arenas, and a 2 MiB page is resident as soon as one byte of it is touched: the
/// dispatcher's peak RSS at 2,048 pushes in flight was 105–111 MiB with them and 83–86 MiB
/// without, at the same CPU per push (docs/decisions.md). Called first thing in `main`, before
/// the runtime's threads and arenas fault memory in; a kernel that refuses only costs that
/// memory.
pub fn without_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}
