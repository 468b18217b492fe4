//! The `mysocketd` processes of a run, each started inside its node's network namespace.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;

use anyhow::Context;

use crate::cloud;
use crate::net;

/// How the nodes are started; shared by every start and restart.
pub struct NodeSpec {
    pub binary: PathBuf,
    pub dir: PathBuf,
    pub nodes: usize,
    pub secret: String,
    /// Every node's `--operator-token-file`.
    pub operator_token_file: PathBuf,
    /// Every node's OpenID Connect provider (`--oidc-issuer`, the harness's provider) and the
    /// file holding the client secret (`--oidc-client-secret-file`), for cloud authentication.
    pub oidc_issuer: String,
    pub oidc_client_secret_file: PathBuf,
    pub planted_bug: Option<String>,
    /// Entries between snapshots: small, so a node that was down catches up from a snapshot.
    pub snapshot_threshold: u64,
}

/// Node processes by slot: slot `i` is namespace `msj<i>` and address `10.99.0.<i>`. A slot
/// starts with Raft id `i`; the membership nemesis replaces its node by one with a new id.
pub struct Nodes {
    spec: NodeSpec,
    procs: Vec<Option<Child>>,
    paused: Vec<bool>,
    ids: Vec<u64>,
    joined: Vec<bool>,
    next_id: u64,
}

impl Nodes {
    pub fn new(spec: NodeSpec) -> Nodes {
        let n = spec.nodes;
        Nodes {
            spec,
            procs: (0..=n).map(|_| None).collect(),
            paused: vec![false; n + 1],
            ids: (0..=n as u64).collect(),
            joined: vec![false; n + 1],
            next_id: n as u64 + 1,
        }
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.spec.dir.join(format!("n{i}.log"))
    }

    /// The Raft id of the node in slot `i` now.
    pub fn id(&self, i: usize) -> u64 {
        self.ids[i]
    }

    /// The slot whose node has Raft id `id`.
    pub fn slot_of(&self, id: u64) -> Option<usize> {
        (1..=self.spec.nodes).find(|&i| self.ids[i] == id)
    }

    /// Replaces slot `i`'s node (already removed from the cluster) by a fresh one with a new
    /// id that joins the cluster through the other slots. Returns the new id.
    pub fn replace(&mut self, i: usize) -> anyhow::Result<u64> {
        self.kill(i);
        self.ids[i] = self.next_id;
        self.next_id += 1;
        self.joined[i] = true;
        self.start(i)?;
        Ok(self.ids[i])
    }

    fn args(&self, i: usize) -> Vec<String> {
        let id = self.ids[i];
        let mut a = vec![
            "--id".to_string(),
            id.to_string(),
            "--host".into(),
            net::ip(i),
            "--data-dir".into(),
            self.spec.dir.join(format!("node-{id}")).display().to_string(),
            "--dns-listen".into(),
            format!("{}:{}", net::ip(i), crate::dns::PORT),
        ];
        if self.joined[i] {
            let peers: Vec<String> =
                (1..=self.spec.nodes).filter(|&j| j != i).map(|j| format!("{}:7071", net::ip(j))).collect();
            a.extend(["--join".to_string(), peers.join(",")]);
        } else {
            let initial: Vec<String> = (1..=self.spec.nodes).map(|j| format!("{j}={}:7071", net::ip(j))).collect();
            a.extend(["--initial-cluster".to_string(), initial.join(",")]);
        }
        a.extend([
            "--cluster-secret".into(),
            self.spec.secret.clone(),
            "--operator-token-file".into(),
            self.spec.operator_token_file.display().to_string(),
            "--max-accounts".into(),
            "1000000".into(),
            // The workload's clients all come from the host's one address.
            "--login-rate".into(),
            "1000000".into(),
            "--signup-rate".into(),
            "1000000".into(),
            "--write-rate".into(),
            "1000000".into(),
            "--max-connections-per-source".into(),
            "1000000".into(),
            "--snapshot-threshold".into(),
            self.spec.snapshot_threshold.to_string(),
            "--max-http-sockets".into(),
            "1000000".into(),
            "--max-tcp-sockets".into(),
            "1000000".into(),
            "--tcp-ports".into(),
            "20000-29999".into(),
            "--oidc-issuer".into(),
            self.spec.oidc_issuer.clone(),
            "--oidc-client-id".into(),
            cloud::CLIENT_ID.into(),
            "--oidc-client-secret-file".into(),
            self.spec.oidc_client_secret_file.display().to_string(),
            "--log".into(),
            "info".into(),
        ]);
        if let Some(b) = &self.spec.planted_bug {
            a.push("--planted-bug".into());
            a.push(b.clone());
        }
        a
    }

    /// Starts node `i` (a no-op when it runs), appending to its log.
    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        if self.alive(i) {
            return Ok(());
        }
        let log = OpenOptions::new().create(true).append(true).open(self.log_path(i))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &net::netns(i)])
            .arg(&self.spec.binary)
            .args(self.args(i))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {i}"))?;
        self.procs[i] = Some(child);
        self.paused[i] = false;
        Ok(())
    }

    pub fn alive(&mut self, i: usize) -> bool {
        match &mut self.procs[i] {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// kill -9.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused[i] = false;
    }

    fn signal(&self, i: usize, sig: &str) -> anyhow::Result<()> {
        let pid = self.procs[i].as_ref().map(|c| c.id()).context("node is not running")?;
        let st = Command::new("kill").args([sig, &pid.to_string()]).status()?;
        anyhow::ensure!(st.success(), "kill {sig} {pid} failed");
        Ok(())
    }

    /// SIGSTOP: the process stays, frozen, with its sockets open.
    pub fn pause(&mut self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "-STOP")?;
        self.paused[i] = true;
        Ok(())
    }

    pub fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        if self.paused[i] {
            self.signal(i, "-CONT")?;
            self.paused[i] = false;
        }
        Ok(())
    }

    /// Resumes paused nodes and starts the dead ones.
    pub fn restore_all(&mut self) -> anyhow::Result<()> {
        for i in 1..=self.spec.nodes {
            self.resume(i)?;
            self.start(i)?;
        }
        Ok(())
    }

    pub fn stop_all(&mut self) {
        for i in 1..=self.spec.nodes {
            let _ = self.resume(i);
            self.kill(i);
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.stop_all();
    }
}
