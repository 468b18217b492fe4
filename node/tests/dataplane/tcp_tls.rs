//! https, tcp and tls sockets through every node, with the cluster's certificate or the
//! operator's.

use std::time::Duration;

use mysocket_api::SocketCreate;
use mysocket_testkit::*;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_tcp_and_tls_sockets_answer_through_every_node() {
    let c = TestCluster::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "dave").await;
    let ca = reqwest::get(format!("{}/cluster/ca.pem", c.nodes[&2].api_url())).await.unwrap().text().await.unwrap();
    assert!(ca.contains("BEGIN CERTIFICATE"));
    let conn = tls_connector(&ca);
    let origin_port = origin().await;
    let mk = |t: &str| SocketCreate { name: t.into(), socket_type: Some(t.into()), ..Default::default() };
    let https = api.connect(&mk("https")).await.unwrap();
    let tcp = api.connect(&mk("tcp")).await.unwrap();
    let tls = api.connect(&mk("tls")).await.unwrap();
    let n1 = c.nodes[&1].ip.clone();
    let _t1 = ssh_forward(&key, &u.user_name, &n1, https.tunnels[0].local_port, origin_port);
    let _t2 = ssh_forward(&key, &u.user_name, &c.nodes[&2].ip, tcp.tunnels[0].local_port, origin_port);
    let _t3 = ssh_forward(&key, &u.user_name, &c.nodes[&3].ip, tls.tunnels[0].local_port, origin_port);

    for id in [1u64, 2, 3] {
        let ip = c.nodes[&id].ip.clone();
        let what = format!("https through node {id}");
        let got = served(&what, (&ip, 8443), Some(&conn), &https.dnsname, |r| r.starts_with("HTTP/1.1 200")).await;
        assert!(got.to_lowercase().contains("x-forwarded-proto: https"), "{got}");
        // HTTP/2 (ALPN h2) with curl, verified against the cluster CA.
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca).unwrap();
        let out = std::process::Command::new("curl")
            .args(["-sS", "--http2", "-w", "\nversion=%{http_version}", "--cacert"])
            .arg(&ca_file)
            .args(["--resolve", &format!("{}:8443:{ip}", https.dnsname), &format!("https://{}:8443/h2", https.dnsname)])
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("origin saw:") && text.ends_with("version=2"),
            "HTTP/2 through node {id}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (tcp_port, tls_port) = (tcp.socket_tcp_ports[0], tls.socket_tcp_ports[0]);
        let origin_saw = |r: &str| r.contains("origin saw:");
        served(&format!("tcp through node {id}"), (&ip, tcp_port), None, &tcp.dnsname, origin_saw).await;
        served(&format!("tls through node {id}"), (&ip, tls_port), Some(&conn), &tls.dnsname, origin_saw).await;
    }

    // Deleting a socket closes its listeners on every node.
    api.delete_socket(&tcp.socket_id).await.unwrap();
    let port = tcp.socket_tcp_ports[0];
    for id in [1u64, 2, 3] {
        let ip = c.nodes[&id].ip.clone();
        eventually(Duration::from_secs(20), &format!("node {id} to close the tcp listener"), || {
            let ip = ip.clone();
            async move { tokio::net::TcpStream::connect((ip.as_str(), port)).await.is_err().then_some(()) }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_certificate_is_served_for_https_and_tls_sockets() {
    let pki = tempfile::tempdir().unwrap();
    let (op_ca, cert, key) = test_pki(&["*.example.test".to_string()]);
    let (cert_file, key_file) = (pki.path().join("edge.pem"), pki.path().join("edge.key"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let c = TestCluster::builder()
        .arg("--domain")
        .arg("example.test")
        .arg("--tls-cert")
        .arg(cert_file.to_str().unwrap())
        .arg("--tls-key")
        .arg(key_file.to_str().unwrap())
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "olga").await;
    let origin_port = origin().await;
    let mk = |t: &str| SocketCreate { name: t.into(), socket_type: Some(t.into()), ..Default::default() };
    let https = api.connect(&mk("https")).await.unwrap();
    let tls = api.connect(&mk("tls")).await.unwrap();
    assert!(https.dnsname.ends_with(".example.test"), "{}", https.dnsname);
    let _t1 = ssh_forward(&key, &u.user_name, &c.nodes[&1].ip, https.tunnels[0].local_port, origin_port);
    let _t2 = ssh_forward(&key, &u.user_name, &c.nodes[&1].ip, tls.tunnels[0].local_port, origin_port);
    let operator = tls_connector(&op_ca);
    let cluster_ca =
        reqwest::get(format!("{}/cluster/ca.pem", c.nodes[&1].api_url())).await.unwrap().text().await.unwrap();
    let cluster = tls_connector(&cluster_ca);
    for id in [1u64, 2] {
        let ip = c.nodes[&id].ip.clone();
        let what = format!("https with the operator's certificate via node {id}");
        served(&what, (&ip, 8443), Some(&operator), &https.dnsname, |r| r.starts_with("HTTP/1.1 200")).await;
        let what = format!("tls with the operator's certificate via node {id}");
        let port = tls.socket_tcp_ports[0];
        served(&what, (&ip, port), Some(&operator), &tls.dnsname, |r| r.contains("origin saw:")).await;
        // The cluster's own CA did not sign what is served.
        let r = request(&ip, 8443, Some((&cluster, &https.dnsname)), &https.dnsname).await;
        assert_eq!(r, "tls handshake failed", "node {id} served a certificate of the cluster CA");
    }
}
