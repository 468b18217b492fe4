//! `mysocketd`: parse and validate the configuration, set up logging, run the node until
//! SIGTERM or Ctrl-C.

use clap::Parser;
use mysocket_node::config::Config;
use mysocket_node::config::Settings;

/// sysexits' EX_CONFIG: the configuration is wrong, retrying will not help.
const EXIT_CONFIG: i32 = 78;

/// mimalloc instead of glibc's malloc: under load the node allocates and frees small buffers on
/// every worker thread (HTTP, gRPC, Raft entries), and glibc's arenas showed up in `perf` under
/// load (BENCHMARKS.md, registry writes).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let flags = Settings::parse();
    let config = match Config::load(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mysocketd: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    // Log lines are written by a thread of their own. Written from the runtime's threads, a
    // line could wait behind the disk (appending to a file waits for a journal commit another
    // process's fsync started) and hold up every task queued on that thread: other tenants'
    // requests stalled tens of milliseconds while a thousand tunnels logged their logins.
    // Lossless: a writer that gets far ahead of the thread waits for it.
    let (log_writer, log_flushed) =
        tracing_appender::non_blocking::NonBlockingBuilder::default().lossy(false).finish(std::io::stdout());
    tracing_subscriber::fmt()
        .with_writer(log_writer)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&config.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = rt.block_on(mysocket_node::run(config, shutdown_signal()));
    // Every line logged is written out before the process ends.
    drop(log_flushed);
    if let Err(e) = result {
        eprintln!("mysocketd: {e:#}");
        std::process::exit(1);
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::signal;
    use tokio::signal::unix::SignalKind;
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
    }
}
