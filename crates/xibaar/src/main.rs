use clap::Parser;

/// The sender's hot path allocates many short-lived buffers (JSON, HTTP/2 frames, NATS
/// messages) across threads; glibc's allocator spent a quarter of the dispatcher's CPU on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // No transparent huge pages for this process. mimalloc asks for them on its arenas, and a
    // 2 MiB page is resident as soon as one byte of it is touched: the dispatcher's peak RSS at
    // 2,048 pushes in flight was 105–107 MiB with them and 83–85 MiB without, at the same CPU
    // per push (docs/benchmarks.md). Set before the runtime's threads and arenas fault in
    // memory; a kernel that refuses only costs that memory.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let cli = xibaar::cli::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(xibaar::cli::execute(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
