//! Cloud authentication under faults: the OpenID Connect provider the nodes sign visitors in
//! with.
//!
//! The provider (`oidc-provider-mock`, which `scripts/test.sh` installs) runs in the harness on
//! the bridge's host address, which every node reaches whatever the faults (they cut
//! node-to-node traffic only).

use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;

use crate::net;

/// Where `scripts/test.sh` installs the provider; `MYSOCKET_OIDC_PROVIDER` names another.
const PROVIDER_DEFAULT: &str = "/var/tmp/mysocket-browser-venv/bin/oidc-provider-mock";
/// The provider's port on the harness's address.
const PROVIDER_PORT: u16 = 9400;
/// How long the provider may take to start.
const PROVIDER_START: Duration = Duration::from_secs(30);
/// The nodes' client id at the provider (which takes any client).
pub const CLIENT_ID: &str = "mysocket-edge";
/// The one email the guarded socket allows.
pub const ALICE: &str = "alice@example.com";
/// Verified by the provider too, but not allowed.
const BOB: &str = "bob@other.org";

/// The provider's issuer URL: the address it listens on, which it names itself by.
pub fn issuer() -> String {
    format!("http://{}:{PROVIDER_PORT}", net::HOST_IP)
}

/// The provider's program: `MYSOCKET_OIDC_PROVIDER`, or where `scripts/test.sh` installs it.
pub fn provider_binary() -> anyhow::Result<PathBuf> {
    let bin = std::env::var_os("MYSOCKET_OIDC_PROVIDER").map(PathBuf::from).unwrap_or_else(|| PROVIDER_DEFAULT.into());
    anyhow::ensure!(
        bin.exists(),
        "no OpenID provider at {}, which the cloud-authentication check needs: scripts/test.sh installs \
         oidc-provider-mock there (or set MYSOCKET_OIDC_PROVIDER to one)",
        bin.display()
    );
    Ok(bin)
}

/// The running provider; stopped when dropped, at the end of the run or when it fails.
pub struct Provider {
    child: Child,
}

impl Provider {
    /// Starts the provider on the harness's address (the bridge must exist) with alice and bob
    /// as its users, logging to `oidc-provider.log` in `dir`, and waits until it answers.
    pub async fn start(binary: &Path, dir: &Path) -> anyhow::Result<Provider> {
        let log = std::fs::File::create(dir.join("oidc-provider.log"))?;
        let user = |email: &str| serde_json::json!({"sub": email, "email": email, "email_verified": true}).to_string();
        let child = Command::new(binary)
            .args(["--host", net::HOST_IP, "--port", &PROVIDER_PORT.to_string(), "--require-nonce"])
            .args(["--user-claims", &user(ALICE), "--user-claims", &user(BOB)])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting the OpenID provider {}", binary.display()))?;
        let mut provider = Provider { child };
        provider.wait_ready().await?;
        Ok(provider)
    }

    /// Until the provider serves its discovery document; an error if it exits or is too slow.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = format!("{}/.well-known/openid-configuration", issuer());
        let http = plain()?;
        let deadline = Instant::now() + PROVIDER_START;
        loop {
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), http.get(&url).send()).await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("the OpenID provider exited ({status}); see oidc-provider.log in the report folder");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the OpenID provider did not answer {url} within {PROVIDER_START:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills the provider (a no-op once it is gone).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An HTTP client that follows no redirect and keeps no cookie or connection.
fn plain() -> anyhow::Result<reqwest::Client> {
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()?;
    Ok(c)
}
