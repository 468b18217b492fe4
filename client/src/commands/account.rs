//! `account create` and `account show`.

use std::path::PathBuf;

use mysocket_api::UserCreate;

use super::given_or_prompt;
use crate::cli::AccountCmd;
use crate::context::Context;
use crate::failure::fail;
use crate::failure::Failure;
use crate::output;
use crate::store;

pub async fn run(cmd: AccountCmd, ctx: &Context) -> Result<(), Failure> {
    match cmd {
        AccountCmd::Create { name, email, password, sshkey } => {
            let password = given_or_prompt(password, "Password", true)?;
            let sshkey = read_sshkey(sshkey)?;
            let u = ctx.maybe_operator().create_user(&UserCreate { name, email, password, sshkey }).await?;
            ctx.output.print(&u, output::account_created);
        }
        AccountCmd::Show => {
            let token = store::read_token()?;
            // An API key does not carry its account's id: `me` names the caller's account.
            let id = match mysocket_api::token_user_id(&token) {
                Some(id) => id,
                None if token.starts_with("mysk_") => "me".to_string(),
                None => return Err(fail(3, "the stored token is unreadable; log in again")),
            };
            let u = ctx.anon().clone().with_token(token).get_user(&id).await?;
            ctx.output.print(&u, output::account);
        }
    }
    Ok(())
}

/// The public key to register: the given text, a file, or the user's default key.
fn read_sshkey(arg: Option<String>) -> Result<String, Failure> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let candidates: Vec<PathBuf> = match &arg {
        Some(a) if a.trim_start().starts_with("ssh-") || a.trim_start().starts_with("ecdsa-") => {
            return Ok(a.trim().to_string())
        }
        Some(a) => vec![PathBuf::from(a)],
        None => ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"].iter().map(|f| home.join(".ssh").join(f)).collect(),
    };
    for p in &candidates {
        if let Ok(k) = std::fs::read_to_string(p) {
            return Ok(k.trim().to_string());
        }
    }
    Err(fail(
        2,
        match arg {
            Some(a) => format!("--sshkey {a:?} is neither a public key nor a readable file"),
            None => "no --sshkey given and no ~/.ssh/id_ed25519.pub, id_ecdsa.pub or id_rsa.pub; create one with ssh-keygen -t ed25519".into(),
        },
    ))
}
