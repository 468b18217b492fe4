//! What each node did, as its metrics and the operator's dashboard show it.

use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use mysocket_api::SocketCreate;
use mysocket_testkit::*;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_the_dashboard_show_what_each_node_did() {
    let c = TestCluster::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "mia").await;
    let sock = api.connect(&SocketCreate { name: "web".into(), ..Default::default() }).await.unwrap();
    let ip = |n: u64| c.nodes[&n].ip.clone();
    let _ssh = ssh_forward(&key, &u.user_name, &ip(1), sock.tunnels[0].local_port, origin().await);
    answered(&ip(1), &sock.dnsname, "the URL through node 1").await;
    // A login with a user name nobody has, refused by node 1.
    let stranger = Command::new("ssh")
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
        .args(["-o", "LogLevel=ERROR", "-i"])
        .arg(&key)
        .args(["-p", "2222", "-l", "nobody-at-all", &ip(1), "true"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!stranger.success());
    eventually(Duration::from_secs(10), "node 1 to count the stranger's refused login", || async {
        (sample(&scrape(ip(1), &c.operator_token).await, r#"mysocket_ssh_logins_total{result="refused"}"#) == 1.0)
            .then_some(())
    })
    .await;

    let before: Vec<_> = futures::future::join_all([1, 2, 3].map(|n| scrape(ip(n), &c.operator_token))).await;
    for _ in 0..3 {
        assert_eq!(get(&ip(2), &sock.dnsname, None).await.0, 200);
    }
    assert_eq!(get(&ip(3), "nobody.localhost", None).await.0, 404);
    let after: Vec<_> = futures::future::join_all([1, 2, 3].map(|n| scrape(ip(n), &c.operator_token))).await;
    let delta = |n: usize, k: &str| sample(&after[n - 1], k) - sample(&before[n - 1], k);

    // Node 2 answered three requests, each relayed to node 1, which holds the tunnel.
    assert_eq!(delta(2, r#"mysocket_http_responses_total{scheme="http",code="2xx"}"#), 3.0);
    assert!(delta(2, r#"mysocket_upstreams_total{result="relayed"}"#) >= 1.0);
    assert_eq!(delta(2, r#"mysocket_upstreams_total{result="local"}"#), 0.0);
    assert!(delta(1, r#"mysocket_relays_served_total{result="served"}"#) >= 1.0);
    assert_eq!(delta(1, r#"mysocket_relays_served_total{result="stale_epoch"}"#), 0.0);
    assert_eq!(delta(2, r#"mysocket_connections_accepted_total{listener="http"}"#), 3.0);
    assert_eq!(delta(3, r#"mysocket_http_responses_total{scheme="http",code="4xx"}"#), 1.0);
    assert_eq!(delta(1, r#"mysocket_http_responses_total{scheme="http",code="2xx"}"#), 0.0);
    // Node 1's SSH server: the tunnel's login and claim, and the stranger refused.
    let n1 = &after[0];
    assert_eq!(sample(n1, r#"mysocket_ssh_logins_total{result="accepted"}"#), 1.0);
    assert_eq!(sample(n1, r#"mysocket_ssh_logins_total{result="refused"}"#), 1.0);
    assert_eq!(sample(n1, r#"mysocket_ssh_forwards_total{result="claimed"}"#), 1.0);
    assert_eq!(sample(n1, r#"mysocket_connections_open{listener="ssh"}"#), 1.0);
    assert_eq!(sample(n1, "mysocket_tunnels_held_here"), 1.0);
    assert_eq!(sample(&after[1], "mysocket_tunnels_held_here"), 0.0);
    // One leader, whom every node names; the registry's totals alike everywhere.
    let leaders: Vec<u64> =
        (1..=3).filter(|n| sample(&after[*n as usize - 1], "mysocket_raft_is_leader") == 1.0).collect();
    assert_eq!(leaders.len(), 1, "one node says it leads");
    for m in &after {
        assert_eq!(sample(m, "mysocket_raft_leader"), leaders[0] as f64);
        assert_eq!(sample(m, "mysocket_raft_voters"), 3.0);
        assert_eq!(sample(m, "mysocket_tunnels_connected"), 1.0);
        assert_eq!(sample(m, "mysocket_sockets"), 1.0);
        assert_eq!(sample(m, "mysocket_accounts"), 1.0);
    }

    // The dashboard, for an operator (a browser sends the token as Basic auth's password):
    // every node, the leader, the totals; no account's or socket's name.
    let token = c.operator_token.clone();
    let page = |n: u64| {
        let token = token.clone();
        async move {
            let http = reqwest::Client::new();
            let resp = http.get(format!("http://{}:7070/", ip(n))).basic_auth("ops", Some(token)).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
            resp.text().await.unwrap()
        }
    };
    let html = page(3).await;
    assert!(html.contains(&format!("Leader: node {}", leaders[0])), "{html}");
    for n in [1u64, 2, 3] {
        assert!(html.contains(&format!("<td>{}:7070</td>", ip(n))), "node {n}'s API address: {html}");
    }
    assert!(html.contains("<td>3 (this node)</td>"), "{html}");
    assert!(html.contains("<tr><th>sockets</th><td class=n>1</td></tr>"), "{html}");
    assert!(html.contains("<tr><th>tunnels connected</th><td class=n>1</td></tr>"), "{html}");
    assert!(!html.contains(&sock.dnsname) && !html.contains("mia@example.com") && !html.contains(&u.user_name));
    api.delete_socket(&sock.socket_id).await.unwrap();
    eventually(Duration::from_secs(10), "the dashboard to show the socket gone", || async {
        page(3).await.contains("<tr><th>sockets</th><td class=n>0</td></tr>").then_some(())
    })
    .await;
}
