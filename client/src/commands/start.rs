//! `start`: every tunnel of a config file, in one process and one SSH session; SIGHUP (or
//! `reload`) applies the file again without dropping the tunnels that stay. `reload` and
//! `config check`, which check the file first and say what is wrong on which line.

use std::path::Path;
use std::path::PathBuf;

use mysocket_api::ApiClient;

use super::connect::reuse_or_create;
use super::serve;
use super::serve::TunnelCluster;
use crate::config;
use crate::config::Config;
use crate::context::Context;
use crate::failure::fail;
use crate::failure::Failure;
use crate::tunnel::Forward;

fn load(path: &Path) -> Result<Config, Failure> {
    config::load(path).map_err(|e| fail(2, e))
}

pub async fn run(path: Option<PathBuf>, inspect: Option<String>, ctx: &Context) -> Result<(), Failure> {
    let path = path.unwrap_or_else(config::default_path);
    let conf = load(&path)?;
    let cluster = TunnelCluster::of(ctx, &ctx.authed()?).await?;
    let identity = crate::tunnel::find_identity(conf.identity.clone())?;
    let inspect = inspect.or(conf.inspect.clone()).unwrap_or_else(|| crate::inspect::web::DEFAULT.to_string());
    let inspector = serve::inspector(&inspect).await?;
    let (forwards, user, server) = resolve(&cluster.api, &conf, &[]).await?;
    let (tx, rx) = tokio::sync::watch::channel(forwards);
    let pid = PidFile::create(&path)?;
    eprintln!(
        "Running {} tunnel(s) from {}; `mysocketctl reload` (or SIGHUP to pid {}) applies changes to it",
        conf.tunnels.len(),
        path.display(),
        std::process::id()
    );
    let spec = cluster.spec(&user, &server, identity, rx, inspector);
    let reloads = async {
        use tokio::signal::unix::signal;
        use tokio::signal::unix::SignalKind;
        let mut hup = signal(SignalKind::hangup()).expect("install SIGHUP handler");
        while hup.recv().await.is_some() {
            let now = tx.borrow().clone();
            match config::load(&path) {
                Err(e) => eprintln!("reload refused, the tunnels run as before: {e}"),
                Ok(new) => match resolve(&cluster.api, &new, &now).await {
                    Ok((f, _, _)) => {
                        let (kept, gone) = (f.iter().filter(|x| now.contains(x)).count(), now.len());
                        eprintln!("reloaded {}: {} tunnel(s), {kept} of {gone} unchanged", path.display(), f.len());
                        let _ = tx.send(f);
                    }
                    Err(e) => eprintln!("reload failed, the tunnels run as before: {}", e.message),
                },
            }
        }
    };
    let outcome = tokio::select! {
        r = crate::tunnel::run(spec, cluster.api.clone()) => r.map_err(Failure::from),
        () = reloads => Ok(()),
        () = serve::stop_signal() => Ok(()),
    };
    drop(pid);
    eprintln!("stopped; the sockets are kept for the next start");
    outcome
}

/// The forwards the file asks for: each tunnel already forwarded in `now` (by name) keeps its
/// relay port, its socket's rules set to the file's; the others reuse or make the account's
/// socket of that name. Also the SSH user and the first SSH server to try.
async fn resolve(api: &ApiClient, conf: &Config, now: &[Forward]) -> Result<(Vec<Forward>, String, String), Failure> {
    let mut out = Vec::new();
    let (mut user, mut server) = (String::new(), String::new());
    for t in &conf.tunnels {
        let (sock, tunnel) = match now.iter().find(|f| f.name == t.want.name) {
            Some(f) => {
                let sock = api.socket(&f.socket_id).await?;
                super::connect::same_endpoint(&sock, &t.want)?;
                let sock = api.update_socket(&sock.socket_id, &super::connect::rules(&t.want)).await?;
                let tunnel = sock.tunnels.iter().find(|x| x.tunnel_id == f.tunnel_id).cloned();
                match tunnel {
                    Some(x) => (sock, x),
                    None => reuse_or_create(api, &t.want).await?,
                }
            }
            None => reuse_or_create(api, &t.want).await?,
        };
        if !now.iter().any(|f| f.tunnel_id == tunnel.tunnel_id) {
            eprint!("{}: ", sock.name);
            serve::print_urls(&sock);
        }
        user = sock.user_name.clone();
        server = tunnel.tunnel_server.clone();
        out.push(serve::forward(&sock, &tunnel, t.host.clone(), t.port));
    }
    Ok((out, user, server))
}

/// Where a running `start` leaves its pid, for `reload`: one file per config file and user.
fn pid_path(config: &Path) -> PathBuf {
    let canonical = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    // FNV-1a of the path: a short stable name.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let uid = nix::unistd::getuid();
    dir.join(format!("mysocketctl-{uid}-{h:016x}.pid"))
}

struct PidFile(PathBuf);

impl PidFile {
    fn create(config: &Path) -> Result<PidFile, Failure> {
        let p = pid_path(config);
        std::fs::write(&p, std::process::id().to_string())
            .map_err(|e| fail(1, format!("cannot write the pid file {}: {e}", p.display())))?;
        Ok(PidFile(p))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if std::fs::read_to_string(&self.0).is_ok_and(|p| p.trim() == std::process::id().to_string()) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// `reload`: checks the file, then signals the `start` running it.
pub fn reload(path: Option<PathBuf>) -> Result<(), Failure> {
    let path = path.unwrap_or_else(config::default_path);
    let conf = load(&path)?;
    let pid_file = pid_path(&path);
    let none = || fail(1, format!("no `mysocketctl start` runs with {} (no {})", path.display(), pid_file.display()));
    let pid: i32 = std::fs::read_to_string(&pid_file).ok().and_then(|p| p.trim().parse().ok()).ok_or_else(none)?;
    // Only a mysocketctl gets the signal (a stale file may name another process now).
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains("mysocketctl") {
        return Err(none());
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP).map_err(|_| none())?;
    println!("{}: {} tunnel(s); sent to mysocketctl start (pid {pid})", path.display(), conf.tunnels.len());
    Ok(())
}

/// `config check`.
pub fn check(path: Option<PathBuf>) -> Result<(), Failure> {
    let path = path.unwrap_or_else(config::default_path);
    let conf = load(&path)?;
    for t in &conf.tunnels {
        println!("{}: {} -> {}:{}", t.want.name, t.want.socket_type.as_deref().unwrap_or("http"), t.host, t.port);
    }
    println!("{}: ok, {} tunnel(s)", path.display(), conf.tunnels.len());
    Ok(())
}
