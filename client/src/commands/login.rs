//! `login`: the token into the token file, the cluster's nodes beside it.

use super::given_or_prompt;
use crate::context::Context;
use crate::failure::Failure;
use crate::store;

pub async fn run(email: Option<String>, password: Option<String>, ctx: &Context) -> Result<(), Failure> {
    let email = given_or_prompt(email, "Email", false)?;
    let password = given_or_prompt(password, "Password", true)?;
    let t = ctx.anon().login(&email, &password).await?;
    let path = store::write_token(&t.token)?;
    if let Ok(view) = ctx.anon().cluster().await {
        ctx.remember_nodes(&view);
    }
    let text = format!("Logged in; token saved in {}", path.display());
    ctx.output.done("token_file", path, text);
    Ok(())
}
