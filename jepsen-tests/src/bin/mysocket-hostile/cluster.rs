//! The three nodes under attack: real `mysocketd` processes on 127.0.0.21-23 with the default
//! ports and limits, and a sampler of their memory and open files.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;

pub const NODES: u64 = 3;

pub fn ip(id: u64) -> String {
    format!("127.0.0.{}", 20 + id)
}

pub struct Cluster {
    pub dir: PathBuf,
    pub operator_token: String,
    children: Vec<Child>,
    http: reqwest::Client,
}

fn random_hex() -> String {
    (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

impl Cluster {
    /// Starts the nodes and waits until they have a leader. `timeouts`: the idle and stall
    /// timeouts in seconds (default: the nodes' own).
    pub async fn start(bin_dir: &Path, dir: &Path, timeouts: Option<u64>) -> anyhow::Result<Cluster> {
        let (secret, token) = (dir.join("cluster-secret"), dir.join("operator-token"));
        std::fs::write(&secret, random_hex())?;
        let operator_token = random_hex();
        std::fs::write(&token, &operator_token)?;
        let initial: Vec<String> = (1..=NODES).map(|i| format!("{i}={}:7071", ip(i))).collect();
        let mut children = Vec::new();
        for id in 1..=NODES {
            let log = std::fs::File::create(dir.join(format!("node-{id}.log")))?;
            let mut cmd = Command::new(bin_dir.join("mysocketd"));
            cmd.args(["--id", &id.to_string(), "--host", &ip(id)])
                .arg("--data-dir")
                .arg(dir.join(format!("node-{id}")))
                .arg("--cluster-secret-file")
                .arg(&secret)
                .arg("--operator-token-file")
                .arg(&token)
                .args(["--initial-cluster", &initial.join(",")]);
            if let Some(t) = timeouts {
                cmd.args(["--idle-timeout-secs", &t.to_string(), "--stall-timeout-secs", &t.to_string()]);
            }
            children
                .push(cmd.stdout(log.try_clone()?).stderr(log).spawn().context("starting mysocketd (build it first)")?);
        }
        let c = Cluster { dir: dir.to_path_buf(), operator_token, children, http: reqwest::Client::new() };
        let deadline = Instant::now() + Duration::from_secs(60);
        'wait: loop {
            anyhow::ensure!(Instant::now() < deadline, "the cluster did not get ready in 60 s; see {}", dir.display());
            for id in 1..=NODES {
                let ok = c.http.get(format!("{}/readyz", c.api(id))).send().await.map(|r| r.status().is_success());
                if !matches!(ok, Ok(true)) {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue 'wait;
                }
            }
            break;
        }
        Ok(c)
    }

    pub fn api(&self, id: u64) -> String {
        format!("http://{}:7070", ip(id))
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    /// Node `id`'s `mysocket_refused_total`, by reason.
    pub async fn refused(&self, id: u64) -> anyhow::Result<BTreeMap<String, u64>> {
        let text = self
            .http
            .get(format!("{}/metrics", self.api(id)))
            .bearer_auth(&self.operator_token)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let mut m = BTreeMap::new();
        for line in text.lines().filter(|l| l.starts_with("mysocket_refused_total{")) {
            let reason = line.split('"').nth(1).unwrap_or("").to_string();
            let v: f64 = line.rsplit(' ').next().unwrap_or("0").parse().unwrap_or(0.0);
            m.insert(reason, v as u64);
        }
        Ok(m)
    }

    /// Samples every node's resident memory and open files twice a second until dropped.
    pub fn sample_processes(&self, started: Instant) -> Sampler {
        let samples: Arc<Mutex<Vec<Sample>>> = Default::default();
        let (pids, s) = (self.pids(), samples.clone());
        let task = tokio::spawn(async move {
            loop {
                for (i, pid) in pids.iter().enumerate() {
                    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                        .ok()
                        .and_then(|st| {
                            st.lines()
                                .find(|l| l.starts_with("VmRSS:"))
                                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                        })
                        .unwrap_or(0);
                    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);
                    s.lock().unwrap().push(Sample { at: started.elapsed(), node: i, rss_mib: rss / 1024, fds });
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Sampler { samples, task }
    }

    pub fn stop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One look at one node's process.
struct Sample {
    at: Duration,
    node: usize,
    rss_mib: u64,
    fds: u64,
}

/// Before an attack and the most during and after it, per node.
pub type Levels = Vec<(u64, u64)>;

pub struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Per node: (memory MiB, open files) as the last sample before `t1` showed them, and the
    /// most any sample in `t1..t3` showed.
    pub fn levels(&self, t0: Duration, t1: Duration, t3: Duration) -> (Levels, Levels) {
        let s = self.samples.lock().unwrap();
        let mut rss = Vec::new();
        let mut fds = Vec::new();
        for node in 0..NODES as usize {
            let before = s.iter().rev().find(|x| x.node == node && x.at >= t0 && x.at < t1);
            let (b_rss, b_fds) = before.map(|x| (x.rss_mib, x.fds)).unwrap_or((0, 0));
            let during = s.iter().filter(|x| x.node == node && x.at >= t1 && x.at <= t3);
            let (m_rss, m_fds) = during.fold((b_rss, b_fds), |(r, f), x| (r.max(x.rss_mib), f.max(x.fds)));
            rss.push((b_rss, m_rss));
            fds.push((b_fds, m_fds));
        }
        (rss, fds)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}
