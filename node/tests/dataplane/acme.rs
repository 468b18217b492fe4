//! Certificates over ACME from Pebble (Let's Encrypt's test CA, Debian's `pebble`), which
//! resolves through the cluster's own DNS and validates DNS-01 there: the wildcard is issued
//! and verified with `curl --cacert <Pebble's root>` through every node, renewed before it
//! expires, and renewed again when the node renewing it is killed mid-way.

use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use mysocket_api::SocketCreate;
use mysocket_testkit::*;

use crate::support::*;

const DOMAIN: &str = "acme.test";
/// Pebble's address: outside every test cluster's range.
const PEBBLE: &str = "127.254.0.1";
/// Seconds Pebble's certificates are valid: a renewal every 30 s or so.
const VALIDITY: u64 = 45;

struct Pebble(Child);

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pebble's HTTPS certificate (for `--acme-ca-root`), written in `dir`: (its CA's path, the
/// certificate's and key's paths).
fn pebble_tls(dir: &std::path::Path) -> std::path::PathBuf {
    let (ca, cert, key) = test_pki(&[PEBBLE.to_string()]);
    for (name, pem) in [("pebble-ca.pem", ca), ("pebble.pem", cert), ("pebble.key", key)] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    dir.join("pebble-ca.pem")
}

/// Starts Pebble asking `dns` for every name, validating on the cluster's ports.
fn pebble(dir: &std::path::Path, dns: &str) -> Pebble {
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("{PEBBLE}:14000"),
        "managementListenAddress": format!("{PEBBLE}:15000"),
        "certificate": dir.join("pebble.pem"),
        "privateKey": dir.join("pebble.key"),
        "httpPort": 8080,
        "tlsPort": 8443,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
        "certificateValidityPeriod": VALIDITY,
    }});
    std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
    let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
    let child = Command::new("pebble")
        .args(["-config", dir.join("pebble.json").to_str().unwrap(), "-dnsserver", dns, "-strict", "false"])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .env("PEBBLE_AUTHZREUSE", "0")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("pebble (Debian's pebble package) is installed");
    Pebble(child)
}

/// `curl --cacert root https://<name>:8443/` through `ip`: the status, or curl's complaint.
fn curl(root: &std::path::Path, name: &str, ip: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "--cacert"])
        .arg(root)
        .args(["--resolve", &format!("{name}:8443:{ip}"), &format!("https://{name}:8443/")])
        .output()
        .unwrap();
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).to_string()),
        false => Err(String::from_utf8_lossy(&out.stderr).to_string()),
    }
}

/// The expiry (seconds since the epoch) of the certificate `ip` presents for `name`, if it
/// chains to `root`.
async fn served_expiry(root_pem: &str, name: &str, ip: &str) -> Option<i64> {
    let connector = tls_connector(root_pem);
    let tcp = tokio::net::TcpStream::connect((ip, 8443)).await.ok()?;
    let server = rustls::pki_types::ServerName::try_from(name.to_string()).ok()?;
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(server, tcp)).await.ok()?.ok()?;
    let der = tls.get_ref().1.peer_certificates()?.first()?.clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_gets_renews_and_serves_a_publicly_trusted_wildcard() {
    let work = tempfile::tempdir().unwrap();
    let ca = pebble_tls(work.path());
    let started = Instant::now();
    let mut c = TestCluster::builder()
        .arg("--domain")
        .arg(DOMAIN)
        .arg("--dns-listen")
        .arg("{ip}:5353")
        .arg("--acme-directory")
        .arg(&format!("https://{PEBBLE}:14000/dir"))
        .arg("--acme-email")
        .arg("ops@acme.test")
        .arg("--acme-ca-root")
        .arg(ca.to_str().unwrap())
        .start()
        .await;
    // Pebble asks a node that does not lead (the leader orders, and is killed below).
    let leader = c.agreed_leader(Duration::from_secs(20)).await;
    let dns_node = (1..=3).find(|id| *id != leader).unwrap();
    // Before Pebble runs, orders fail: counted, and logged with what to check.
    let failed = eventually(Duration::from_secs(20), "a failed order logged", || {
        let log = c.log(leader);
        async move { log.lines().find(|l| l.contains("ACME: no certificate")).map(String::from) }
    })
    .await;
    assert!(failed.contains("check that this node reaches"), "{failed}");
    let _pebble = pebble(work.path(), &format!("{}:5353", c.node_ip(dns_node)));

    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "ada").await;
    let web = api
        .connect(&SocketCreate {
            name: "web".into(),
            socket_type: Some("https".into()),
            subdomain: Some("web".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let _ssh = ssh_forward(&key, &u.user_name, &c.nodes[&1].ip, web.tunnels[0].local_port, origin().await);

    // Pebble's root, from its management port.
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .build()
        .unwrap();
    let root_pem = eventually(Duration::from_secs(20), "Pebble's root", || {
        let http = http.clone();
        async move {
            let r = http.get(format!("https://{PEBBLE}:15000/roots/0")).send().await.ok()?;
            r.status().is_success().then_some(())?;
            r.text().await.ok()
        }
    })
    .await;
    let root = work.path().join("pebble-root.pem");
    std::fs::write(&root, &root_pem).unwrap();

    // Issued, and verified by curl through every node.
    let name = format!("web.{DOMAIN}");
    for id in 1..=3 {
        let ip = c.node_ip(id);
        let status = eventually(Duration::from_secs(60), &format!("a trusted certificate through node {id}"), || {
            let got = curl(&root, &name, &ip);
            async move { got.ok() }
        })
        .await;
        assert_eq!(status, "200", "node {id}");
    }
    println!("wildcard issued and served by all three nodes {:?} after the cluster started", started.elapsed());
    let mut m = std::collections::HashMap::new();
    for id in 1..=3 {
        m.extend(scrape(c.node_ip(id), &c.operator_token).await.into_iter().filter(|(_, v)| *v > 0.0));
    }
    assert!(sample(&m, r#"mysocket_acme_orders_total{result="issued"}"#) >= 1.0, "issued counted");
    assert!(sample(&m, r#"mysocket_acme_orders_total{result="failed"}"#) >= 1.0, "failures counted");

    // Renewed before it expires: every node presents the new one.
    let first = served_expiry(&root_pem, &name, &c.node_ip(1)).await.expect("a trusted certificate");
    let renewed = Instant::now();
    for id in 1..=3 {
        let ip = c.node_ip(id);
        eventually(Duration::from_secs(VALIDITY + 30), &format!("the renewed certificate on node {id}"), || {
            let (root_pem, name, ip) = (root_pem.clone(), name.clone(), ip.clone());
            async move { served_expiry(&root_pem, &name, &ip).await.filter(|e| *e > first) }
        })
        .await;
    }
    println!("renewed {:?} after the first was served (lifetime {VALIDITY} s)", renewed.elapsed());
    let second = served_expiry(&root_pem, &name, &c.node_ip(1)).await.unwrap();

    // The node renewing is killed as its next renewal starts: another finishes it.
    let orderer = c.agreed_leader(Duration::from_secs(10)).await;
    let orders = |log: String| log.matches("ACME: ordering a certificate").count();
    let before = orders(c.log(orderer));
    eventually(Duration::from_secs(VALIDITY + 30), "the next renewal to start", || {
        let now = orders(c.log(orderer));
        async move { (now > before).then_some(()) }
    })
    .await;
    c.kill9(orderer);
    let killed = Instant::now();
    for id in c.running() {
        let ip = c.node_ip(id);
        eventually(
            Duration::from_secs(VALIDITY + 30),
            &format!("a certificate renewed after the kill, node {id}"),
            || {
                let (root_pem, name, ip) = (root_pem.clone(), name.clone(), ip.clone());
                async move { served_expiry(&root_pem, &name, &ip).await.filter(|e| *e > second) }
            },
        )
        .await;
        assert_eq!(curl(&root, &name, &c.node_ip(id)).as_deref(), Ok("200"), "node {id} after the kill");
    }
    println!("node {orderer} killed mid-renewal: renewed by another node {:?} later", killed.elapsed());
    for id in 1..=3 {
        let log = c.log(id);
        assert!(!log.contains("PRIVATE KEY"), "node {id} logged a key");
    }
}
