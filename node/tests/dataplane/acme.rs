//! Certificates over ACME from Pebble (Let's Encrypt's test CA, Debian's `pebble`), which
//! resolves through the cluster's own DNS and validates DNS-01 there: the wildcard is issued
//! and verified with `curl --cacert <Pebble's root>` through every node, renewed before it
//! expires, and renewed again when the node renewing it is killed mid-way. Custom domains
//! through a real recursive resolver (Debian's `unbound`, with the cluster's zone delegated to
//! the nodes' DNS and `example.com` to `pebble-challtestsrv`'s, standing in for the user's DNS
//! provider): unverified and not routed, verified by TXT or CNAME, then routed through every
//! node and given a certificate over HTTP-01.

use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use mysocket_api::SocketCreate;
use mysocket_testkit::*;

use crate::support::*;

const DOMAIN: &str = "acme.test";
/// Pebble's address: outside every test cluster's range (127.1–255.*) (the custom-domain test's Pebble, its
/// resolver and the user's DNS server at .11, .12 and .13).
const PEBBLE: &str = "127.0.200.1";
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
fn pebble_tls(dir: &std::path::Path, at: &str) -> std::path::PathBuf {
    let (ca, cert, key) = test_pki(&[at.to_string()]);
    for (name, pem) in [("pebble-ca.pem", ca), ("pebble.pem", cert), ("pebble.key", key)] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    dir.join("pebble-ca.pem")
}

/// Starts Pebble asking `dns` for every name, validating on the cluster's ports.
fn pebble(dir: &std::path::Path, at: &str, dns: &str) -> Pebble {
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("{at}:14000"),
        "managementListenAddress": format!("{at}:15000"),
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

/// Pebble's root (from its management port), written in `dir`: its path and PEM.
async fn pebble_root(dir: &std::path::Path, ca: &std::path::Path, at: &str) -> (std::path::PathBuf, String) {
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap())
        .build()
        .unwrap();
    let root_pem = eventually(Duration::from_secs(20), "Pebble's root", || {
        let http = http.clone();
        async move {
            let r = http.get(format!("https://{at}:15000/roots/0")).send().await.ok()?;
            r.status().is_success().then_some(())?;
            r.text().await.ok()
        }
    })
    .await;
    let root = dir.join("pebble-root.pem");
    std::fs::write(&root, &root_pem).unwrap();
    (root, root_pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_gets_renews_and_serves_a_publicly_trusted_wildcard() {
    let work = tempfile::tempdir().unwrap();
    let ca = pebble_tls(work.path(), PEBBLE);
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
    let _pebble = pebble(work.path(), PEBBLE, &format!("{}:5353", c.node_ip(dns_node)));

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
    let service = origin().await;
    let _ssh = ssh_forward(&key, &u.user_name, &c.nodes[&1].ip, web.tunnels[0].local_port, service);
    // A second tunnel, on node 2: whichever node is killed below, one of them still serves.
    let spare = api.create_tunnel(&web.socket_id).await.unwrap();
    let _ssh2 = ssh_forward(&key, &u.user_name, &c.nodes[&2].ip, spare.local_port, service);

    let (root, root_pem) = pebble_root(work.path(), &ca, PEBBLE).await;

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
    // The operators' dashboard shows the certificate.
    let page = c.operator_page(2).await;
    let table = page.split("id=certificates>").nth(1).expect("the certificates table");
    assert!(table.contains("*.acme.test</td><td class=n>") && table.contains(" s</td>"), "{table}");

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

/// A process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `pebble-challtestsrv`'s management API: sets a record of the user's zone.
async fn user_dns(call: &str, body: serde_json::Value) {
    eventually(Duration::from_secs(10), &format!("pebble-challtestsrv's {call}"), || {
        let req = reqwest::Client::new().post(format!("http://127.0.200.13:8055/{call}")).json(&body);
        async move { req.send().await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_domain_routes_and_gets_a_certificate_once_verified() {
    const DOMAIN: &str = "custom.test";
    let (pebble_at, resolver, user) = ("127.0.200.11", "127.0.200.12", "127.0.200.13");
    let work = tempfile::tempdir().unwrap();
    let ca = pebble_tls(work.path(), pebble_at);
    let c = TestCluster::builder()
        .arg("--domain")
        .arg(DOMAIN)
        .arg("--dns-listen")
        .arg("{ip}:5353")
        .arg("--dns-resolver")
        .arg(&format!("{resolver}:5300"))
        .arg("--acme-directory")
        .arg(&format!("https://{pebble_at}:14000/dir"))
        .arg("--acme-email")
        .arg("ops@custom.test")
        .arg("--acme-ca-root")
        .arg(ca.to_str().unwrap())
        .start()
        .await;
    let ips: Vec<String> = (1..=3).map(|id| c.node_ip(id)).collect();
    // The user's DNS provider, and a recursive resolver that follows the delegations.
    let log = |name: &str| std::fs::File::create(work.path().join(name)).unwrap();
    let _user_dns = Running(
        Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("{user}:8053"), "-management", &format!("{user}:8055")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", "", "-defaultIPv6", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("pebble-challtestsrv (Debian's pebble package)"),
    );
    let stubs: String = ips.iter().map(|ip| format!("  stub-addr: {ip}@5353\n")).collect();
    let dir = work.path().display();
    let conf = format!(
        "server:\n  interface: {resolver}\n  port: 5300\n  access-control: 127.0.0.0/8 allow\n  do-not-query-localhost: no\n  \
         module-config: \"iterator\"\n  local-zone: \"test.\" nodefault\n  cache-max-ttl: 0\n  cache-max-negative-ttl: 0\n  username: \"\"\n  chroot: \"\"\n  \
         directory: \"{dir}\"\n  pidfile: \"{dir}/unbound.pid\"\n  use-syslog: no\n  logfile: \"{dir}/unbound.log\"\n  do-ip6: no\n\
         stub-zone:\n  name: \"{DOMAIN}\"\n{stubs}stub-zone:\n  name: \"example.com\"\n  stub-addr: {user}@8053\n"
    );
    std::fs::write(work.path().join("unbound.conf"), conf).unwrap();
    let _resolver = Running(
        Command::new(if std::path::Path::new("/usr/sbin/unbound").exists() { "/usr/sbin/unbound" } else { "unbound" })
            .args(["-d", "-c", work.path().join("unbound.conf").to_str().unwrap()])
            .stdout(log("unbound.out"))
            .stderr(log("unbound.err"))
            .spawn()
            .expect("unbound (Debian's unbound)"),
    );
    let _pebble = pebble(work.path(), pebble_at, &format!("{resolver}:5300"));

    let home = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, home.path(), 1, "ada").await;
    let (_, _, eve) = ssh_user(&c, home.path(), 2, "eve").await;
    let app = "app.example.com";
    let web = api
        .connect(&SocketCreate { name: "web".into(), custom_domain: Some(app.into()), ..Default::default() })
        .await
        .unwrap();
    let claim = web.custom_domain.clone().expect("the claim");
    assert!(!claim.verified);
    assert_eq!(claim.txt_name, format!("_mysocket-challenge.{app}"));
    assert_eq!(claim.cname_target, web.dnsname);
    let _ssh = ssh_forward(&key, &u.user_name, &c.nodes[&1].ip, web.tunnels[0].local_port, origin().await);
    answered(&c.node_ip(2), &web.dnsname, "the socket's own name").await;

    // Claimed is not routed, and nobody else may claim it.
    for ip in &ips {
        assert_eq!(get(ip, app, None).await.0, 404, "an unverified domain through {ip}");
    }
    let taken = eve
        .create_socket(&SocketCreate { name: "x".into(), custom_domain: Some(app.into()), ..Default::default() })
        .await;
    let e = taken.unwrap_err();
    assert_eq!(e.status(), Some(reqwest::StatusCode::CONFLICT), "{e}");
    let inside = eve
        .create_socket(&SocketCreate {
            name: "x".into(),
            custom_domain: Some(format!("a.{DOMAIN}")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(inside.status(), Some(reqwest::StatusCode::BAD_REQUEST), "{inside}");

    // The proof at the user's DNS provider, and the name pointed at the nodes.
    let started = Instant::now();
    user_dns("set-txt", serde_json::json!({"host": format!("{}.", claim.txt_name), "value": claim.txt_value})).await;
    user_dns("add-a", serde_json::json!({"host": format!("{app}."), "addresses": ips})).await;
    eventually(Duration::from_secs(30), "the custom domain verified", || {
        let api = api.clone();
        let id = web.socket_id.clone();
        async move { api.socket(&id).await.ok()?.custom_domain.filter(|d| d.verified).map(|_| ()) }
    })
    .await;
    println!("custom domain verified {:?} after its TXT record was set", started.elapsed());
    for ip in &ips {
        let ip = ip.clone();
        eventually(Duration::from_secs(10), "the custom domain routed", || {
            let ip = ip.clone();
            async move { (get(&ip, app, None).await.0 == 200).then_some(()) }
        })
        .await;
    }

    // Its certificate, over HTTP-01 answered by whichever node the validator reached.
    let (root, _) = pebble_root(work.path(), &ca, pebble_at).await;
    for id in 1..=3 {
        let ip = c.node_ip(id);
        let status = eventually(Duration::from_secs(90), &format!("{app}'s certificate through node {id}"), || {
            let got = curl(&root, app, &ip);
            async move { got.ok() }
        })
        .await;
        assert_eq!(status, "200", "node {id}");
    }
    println!("custom domain's certificate served by every node {:?} after verification began", started.elapsed());
    let m = scrape(c.node_ip(1), &c.operator_token).await;
    assert!(m.keys().any(|k| k.starts_with("mysocket_acme_orders_total")), "ACME metrics exported");

    // A CNAME proves control too.
    let alias = "alias.example.com";
    let other = api
        .create_socket(&SocketCreate { name: "alias".into(), custom_domain: Some(alias.into()), ..Default::default() })
        .await
        .unwrap();
    user_dns("set-cname", serde_json::json!({"host": format!("{alias}."), "target": format!("{}.", other.dnsname)}))
        .await;
    eventually(Duration::from_secs(30), "the CNAME'd domain verified", || {
        let api = api.clone();
        let id = other.socket_id.clone();
        async move { api.socket(&id).await.ok()?.custom_domain.filter(|d| d.verified).map(|_| ()) }
    })
    .await;

    // Given up, the domain routes nowhere again and is anyone's.
    api.update_socket(
        &web.socket_id,
        &mysocket_api::SocketUpdate { custom_domain: Some(String::new()), ..Default::default() },
    )
    .await
    .unwrap();
    for ip in &ips {
        let ip = ip.clone();
        eventually(Duration::from_secs(10), "the given-up domain unrouted", || {
            let ip = ip.clone();
            async move { (get(&ip, app, None).await.0 == 404).then_some(()) }
        })
        .await;
    }
    eve.create_socket(&SocketCreate { name: "x".into(), custom_domain: Some(app.into()), ..Default::default() })
        .await
        .unwrap();
}
