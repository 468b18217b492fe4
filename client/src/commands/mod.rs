//! One module per command. Each takes its arguments and the [`Context`], and prints its result
//! through [`crate::output::Output`]; `serve` is the tunnel that `connect` and `tunnel connect`
//! share.

mod account;
mod cluster;
mod connect;
mod credentials;
mod login;
mod serve;
mod socket;
mod start;
mod tunnel;

use std::io::IsTerminal;

use crate::cli::Cmd;
use crate::context::Context;
use crate::failure::fail;
use crate::failure::Failure;

pub async fn run(cmd: Cmd, ctx: &Context) -> Result<(), Failure> {
    match cmd {
        Cmd::Account { cmd } => account::run(cmd, ctx).await,
        Cmd::Login { email, password } => login::run(email, password, ctx).await,
        Cmd::Socket { cmd } => socket::run(cmd, ctx).await,
        Cmd::Tunnel { cmd } => tunnel::run(cmd, ctx).await,
        Cmd::Connect { port, spec, temporary, host, identity, inspect } => {
            connect::run(port, spec, temporary, host, identity, inspect, ctx).await
        }
        Cmd::Cluster { cmd } => cluster::run(cmd, ctx).await,
        Cmd::Apikey { cmd } => credentials::apikey(cmd, ctx).await,
        Cmd::Token { cmd } => credentials::token(cmd, ctx).await,
        Cmd::Start { config, inspect } => start::run(config, inspect, ctx).await,
        Cmd::Reload { config } => start::reload(config),
        Cmd::Config { cmd: crate::cli::ConfigCmd::Check { config } } => start::check(config),
        Cmd::Completion { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut crate::cli::Cli::command(), "mysocketctl", &mut script);
            // A closed pipe (`| head`) is no failure worth a message.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            Ok(())
        }
    }
}

/// The flag's value if it was given, else what the user types at the prompt `label` (not
/// echoed if `secret`).
fn given_or_prompt(given: Option<String>, label: &str, secret: bool) -> Result<String, Failure> {
    match given {
        Some(v) => Ok(v),
        None => prompt(label, secret),
    }
}

fn prompt(label: &str, secret: bool) -> Result<String, Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(fail(2, format!("--{} is required when not on a terminal", label.to_lowercase())));
    }
    let v = if secret {
        rpassword::prompt_password(format!("{label}: ")).map_err(|e| fail(1, e.to_string()))?
    } else {
        eprint!("{label}: ");
        let mut s = String::new();
        std::io::stdin().read_line(&mut s).map_err(|e| fail(1, e.to_string()))?;
        s
    };
    Ok(v.trim_end_matches(['\r', '\n']).to_string())
}
