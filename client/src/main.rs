//! `mysocketctl`: the command-line client of a mysocket cluster, with the original
//! mysocket.io client's commands and flags (underscore spellings such as `--socket_id` too).
//!
//! Exit codes scripts can trust: 0 success, 1 failure (server error or unreachable cluster),
//! 2 usage error, 3 not logged in or token refused, 4 not found, 5 conflict or limit.
//!
//! # Layout
//! - `cli`: the commands and flags (clap).
//! - `config`: the config file `start` runs (many tunnels).
//! - `context`: the API clients every command starts from, built from the global flags.
//! - `store`: the token and the cluster's nodes, kept between runs.
//! - `commands`: one module per command.
//! - `output`: the one way results are printed, as tables or JSON (`table` draws the tables).
//! - `tunnel`: the SSH tunnel client that `connect` runs.
//! - `inspect`: the request inspector (its page and API on 127.0.0.1:4040).
//! - `failure`: errors and their exit codes.

mod cli;
mod commands;
mod config;
mod context;
mod failure;
mod inspect;
mod output;
mod store;
mod table;
mod tunnel;

/// mimalloc instead of glibc's malloc: russh allocates a fresh buffer for every 64 KiB packet it
/// receives, and glibc handed those back to the kernel and faulted them in again (BENCHMARKS.md,
/// data plane: what the design does for these figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use cli::Cli;
use context::Context;
use failure::Failure;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(f) = run(cli).await {
        eprintln!("error: {}", f.message);
        std::process::exit(f.code);
    }
}

/// Sets up what every command needs from the global flags, then runs the one asked for.
async fn run(cli: Cli) -> Result<(), Failure> {
    let ctx = Context::new(&cli)?;
    commands::run(cli.cmd, &ctx).await
}
