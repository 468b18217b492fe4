//! `apikey create|ls|revoke` and `token ls|revoke`: an account's own credentials, or with
//! `--account` and the operator credential, any account's.

use mysocket_api::ApiClient;
use mysocket_api::ApiKeyCreate;

use crate::cli::ApikeyCmd;
use crate::cli::TokenCmd;
use crate::cli::Whose;
use crate::context::Context;
use crate::failure::Failure;
use crate::output;

/// The client to ask with: the operator's for `--account`, else the logged-in account's.
fn client(ctx: &Context, whose: &Whose) -> Result<ApiClient, Failure> {
    match whose.account {
        Some(_) => ctx.operator(),
        None => ctx.authed(),
    }
}

pub async fn apikey(cmd: ApikeyCmd, ctx: &Context) -> Result<(), Failure> {
    match cmd {
        ApikeyCmd::Create { name, expires_in_days } => {
            let made = ctx.authed()?.create_api_key(&ApiKeyCreate { name, expires_in_days }).await?;
            ctx.output.print(&made, output::api_key_created);
        }
        ApikeyCmd::Ls { whose } => list(ctx, &whose, "api_key").await?,
        ApikeyCmd::Revoke { id, whose } => revoke(ctx, &whose, id, "API key").await?,
    }
    Ok(())
}

pub async fn token(cmd: TokenCmd, ctx: &Context) -> Result<(), Failure> {
    match cmd {
        TokenCmd::Ls { whose } => list(ctx, &whose, "token").await,
        TokenCmd::Revoke { id, whose } => revoke(ctx, &whose, id, "Token").await,
    }
}

async fn list(ctx: &Context, whose: &Whose, kind: &str) -> Result<(), Failure> {
    let mut all = client(ctx, whose)?.credentials(whose.account.as_deref()).await?;
    all.retain(|c| c.kind == kind);
    ctx.output.print(all.as_slice(), output::credentials);
    Ok(())
}

async fn revoke(ctx: &Context, whose: &Whose, id: String, what: &str) -> Result<(), Failure> {
    client(ctx, whose)?.revoke_credential(&id, whose.account.as_deref()).await?;
    let text = format!("{what} {id} revoked on every node");
    ctx.output.done("revoked", id, text);
    Ok(())
}
