//! The honest tenant, who measures: a local web service published with a real `mysocketctl
//! connect`, four keep-alive clients requesting it through nodes 1 and 2, and an API writer
//! creating and deleting a socket. Also the other accounts the attacks need: a tenant whose
//! service never answers and an account whose password the login flood guesses.

use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

use crate::attacks::Plan;
use crate::cluster::ip;
use crate::cluster::Cluster;
use crate::Service;

/// A `mysocketctl` user with a home of their own.
struct User {
    home: PathBuf,
    email: String,
}

impl User {
    fn new(bin_dir: &Path, dir: &Path, name: &str) -> anyhow::Result<User> {
        let home = dir.join(format!("home-{name}"));
        std::fs::create_dir_all(home.join(".ssh"))?;
        let key = home.join(".ssh/id_ed25519");
        let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status()?;
        anyhow::ensure!(st.success(), "ssh-keygen failed");
        let u = User { home, email: format!("{name}@example.com") };
        let password = format!("{name}-password-1");
        u.ctl(bin_dir, &["account", "create", "--name", name, "--email", &u.email, "--password", &password])?;
        u.ctl(bin_dir, &["login", "--email", &u.email, "--password", &password])?;
        Ok(u)
    }

    fn command(&self, bin_dir: &Path) -> Command {
        let mut c = Command::new(bin_dir.join("mysocketctl"));
        c.env("MYSOCKET_API", format!("http://{}:7070", ip(1)))
            .env("MYSOCKET_TOKEN_FILE", self.home.join("token"))
            .env("HOME", &self.home);
        c
    }

    fn ctl(&self, bin_dir: &Path, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command(bin_dir).args(args).output()?;
        anyhow::ensure!(out.status.success(), "mysocketctl {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn token(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.home.join("token"))?.trim().to_string())
    }

    /// Runs `mysocketctl connect` for `port` as socket `name`; returns it with the socket's
    /// DNS name once the socket exists.
    async fn connect(&self, bin_dir: &Path, dir: &Path, port: u16, name: &str) -> anyhow::Result<(Child, String)> {
        let log = std::fs::File::create(dir.join(format!("connect-{name}.log")))?;
        let child = self
            .command(bin_dir)
            .args(["connect", "--port", &port.to_string(), "--name", name])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ls: serde_json::Value =
                serde_json::from_str(&self.ctl(bin_dir, &["socket", "ls", "--output", "json"])?)?;
            let found = ls.as_array().into_iter().flatten().find(|s| s["name"] == name);
            if let Some(d) = found.and_then(|s| s["dnsname"].as_str()) {
                return Ok((child, d.to_string()));
            }
            anyhow::ensure!(Instant::now() < deadline, "mysocketctl connect made no socket {name}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// A keep-alive HTTP/1.1 service answering every request with `ok`.
async fn serve_ok() -> anyhow::Result<u16> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    Ok(port)
}

/// A service that accepts and never answers.
async fn serve_nothing() -> anyhow::Result<u16> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    Ok(port)
}

pub struct Honest {
    token: String,
    host: String,
    silent_host: String,
    victim_email: String,
    sshkey: String,
    connects: Mutex<Vec<Child>>,
    /// Held by the API writer while one of its sockets exists.
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Honest {
    pub async fn start(bin_dir: &Path, dir: &Path) -> anyhow::Result<Honest> {
        let (ok_port, silent_port) = (serve_ok().await?, serve_nothing().await?);
        let honest = User::new(bin_dir, dir, "honest")?;
        let mallory = User::new(bin_dir, dir, "mallory")?;
        let victim = User::new(bin_dir, dir, "victim")?;
        let (c1, host) = honest.connect(bin_dir, dir, ok_port, "honest").await?;
        let (c2, silent_host) = mallory.connect(bin_dir, dir, silent_port, "silent").await?;
        let h = Honest {
            token: honest.token()?,
            host,
            silent_host,
            victim_email: victim.email.clone(),
            sshkey: std::fs::read_to_string(honest.home.join(".ssh/id_ed25519.pub"))?.trim().to_string(),
            connects: Mutex::new(vec![c1, c2]),
            gate: Default::default(),
        };
        // The honest service answers through both nodes the load goes through.
        let deadline = Instant::now() + Duration::from_secs(30);
        for id in [1, 2] {
            let client = reqwest::Client::builder().resolve(&h.host, format!("{}:8080", ip(id)).parse()?).build()?;
            loop {
                let r = client.get(format!("http://{}:8080/", h.host)).send().await;
                if matches!(&r, Ok(r) if r.status().is_success()) {
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "the honest socket never answered through node {id}: {r:?}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        Ok(h)
    }

    pub fn plan(&self, cluster: &Cluster) -> anyhow::Result<Plan> {
        let n1 = ip(1);
        Ok(Plan {
            api: format!("{n1}:7070"),
            internal: format!("{n1}:7071"),
            ssh: format!("{n1}:2222"),
            http: format!("{n1}:8080"),
            https: format!("{n1}:8443"),
            honest_host: self.host.clone(),
            silent_host: self.silent_host.clone(),
            victim_email: self.victim_email.clone(),
            sshkey: self.sshkey.clone(),
            ca_pem: std::fs::read_to_string(cluster.dir.join("node-1/ca.pem")).context("the cluster CA")?,
        })
    }

    /// The registry's accounts, sockets and tunnels, read while none of the writer's sockets
    /// exists.
    pub async fn registry_counts(&self, cluster: &Cluster) -> anyhow::Result<(u64, u64, u64)> {
        let _quiet = self.gate.lock().await;
        let d: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/cluster/digest", cluster.api(1)))
            .bearer_auth(&cluster.operator_token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let n = |k: &str| d[k].as_u64().unwrap_or(u64::MAX);
        Ok((n("accounts"), n("sockets"), n("tunnels")))
    }

    /// Starts the honest load; it runs until the returned handle is dropped.
    pub fn run_load(&self, cluster: &Cluster, started: Instant) -> Load {
        let records: Arc<Mutex<Vec<Record>>> = Default::default();
        let mut tasks = Vec::new();
        for w in 0..4u64 {
            let node = 1 + w % 2;
            let client = reqwest::Client::builder()
                .resolve(&self.host, format!("{}:8080", ip(node)).parse().expect("address"))
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client");
            let url = format!("http://{}:8080/", self.host);
            tasks.push(tokio::spawn(read_loop(client, url, records.clone(), started)));
        }
        let apis: Vec<String> = [1, 2].iter().map(|&i| cluster.api(i)).collect();
        let writer = write_loop(apis, self.token.clone(), self.gate.clone(), records.clone(), started);
        tasks.push(tokio::spawn(writer));
        Load { records, tasks }
    }

    pub fn stop(&self) {
        for c in self.connects.lock().unwrap().iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Honest {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One keep-alive client of the honest socket: requests it back to back, forever.
async fn read_loop(client: reqwest::Client, url: String, records: Arc<Mutex<Vec<Record>>>, started: Instant) {
    loop {
        let t = Instant::now();
        let ok = match client.get(&url).send().await {
            Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
            Err(_) => false,
        };
        records.lock().unwrap().push(Record { at: started.elapsed(), took: t.elapsed(), ok, write: false });
        if !ok {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The API writer: creates a socket and deletes it again, through `apis` in turn, forever;
/// holds `gate` while one of its sockets exists.
async fn write_loop(
    apis: Vec<String>,
    token: String,
    gate: Arc<tokio::sync::Mutex<()>>,
    records: Arc<Mutex<Vec<Record>>>,
    started: Instant,
) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client");
    let record = |t: Instant, ok: bool| {
        records.lock().unwrap().push(Record { at: started.elapsed(), took: t.elapsed(), ok, write: true })
    };
    for n in 0u64.. {
        let api = &apis[n as usize % apis.len()];
        {
            let _busy = gate.lock().await;
            let t = Instant::now();
            let created = http
                .post(format!("{api}/socket"))
                .header("x-access-token", &token)
                .json(&serde_json::json!({"name": format!("w{n}"), "socket_type": "http"}))
                .send()
                .await;
            let id = match created {
                Ok(r) if r.status().is_success() => {
                    r.json::<serde_json::Value>().await.ok().and_then(|v| v["socket_id"].as_str().map(String::from))
                }
                _ => None,
            };
            record(t, id.is_some());
            if let Some(id) = id {
                // Deleted before the gate opens, retried until it is gone.
                loop {
                    let t = Instant::now();
                    let r = http.delete(format!("{api}/socket/{id}")).header("x-access-token", &token).send().await;
                    let ok = matches!(&r, Ok(r) if r.status().is_success() || r.status() == 404);
                    record(t, ok);
                    if ok {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

struct Record {
    /// When it ended, since the suite started.
    at: Duration,
    took: Duration,
    ok: bool,
    write: bool,
}

pub struct Load {
    records: Arc<Mutex<Vec<Record>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// The service the honest tenant got from what ended in `a..b`.
    pub fn service(&self, a: Duration, b: Duration) -> Service {
        let r = self.records.lock().unwrap();
        let secs = (b - a).as_secs_f64().max(0.001);
        let within = || r.iter().filter(|x| x.at >= a && x.at < b);
        let mut took: Vec<f64> = within().filter(|x| !x.write && x.ok).map(|x| x.took.as_secs_f64() * 1000.0).collect();
        took.sort_by(f64::total_cmp);
        let p99 = if took.is_empty() { 0.0 } else { took[((took.len() as f64 * 0.99) as usize).min(took.len() - 1)] };
        Service {
            requests_per_s: took.len() as f64 / secs,
            p99_ms: p99,
            failed: within().filter(|x| !x.write && !x.ok).count() as u64,
            writes_per_s: within().filter(|x| x.write && x.ok).count() as f64 / secs,
            writes_failed: within().filter(|x| x.write && !x.ok).count() as u64,
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
