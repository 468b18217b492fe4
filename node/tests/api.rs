//! The REST control plane against a real three-node cluster: each step through a different
//! node, isolation between accounts, bad input (clear error, nothing changed), tokens across a
//! leader change.

use std::time::Duration;

use mysocket_api::ApiClient;
use mysocket_api::SocketCreate;
use mysocket_testkit::*;
use reqwest::StatusCode;
use serde_json::json;
use serde_json::Value;

async fn logged_in(c: &TestCluster, via: u64, n: usize) -> (ApiClient, String) {
    let u = c.api(via).create_user(&user(n)).await.unwrap();
    let t = c.api(via).login(&user(n).email, &user(n).password).await.unwrap();
    (c.api(via).with_token(t.token.clone()), u.user_id)
}

fn sock(name: &str, t: &str) -> SocketCreate {
    SocketCreate { name: name.into(), socket_type: Some(t.into()), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_client_flows_work_through_any_node() {
    let c = TestCluster::builder().start().await;
    let u = c.api(1).create_user(&user(1)).await.unwrap();
    assert_eq!(u.user_name, u.user_id.replace('-', ""));
    let token = c.api(2).login(&user(1).email, &user(1).password).await.unwrap().token;
    assert_eq!(mysocket_api::token_user_id(&token).as_deref(), Some(u.user_id.as_str()));
    let via = |id: u64| c.api(id).with_token(token.clone());

    assert_eq!(via(3).get_user(&u.user_id).await.unwrap().email, user(1).email);

    // A socket created through node 1 is listed at once through node 3.
    let http = via(1).create_socket(&sock("web", "HTTP")).await.unwrap();
    assert_eq!(http.socket_type, "http");
    assert_eq!(http.socket_tcp_ports, vec![80, 443]);
    assert!(http.dnsname.ends_with(".localhost"), "{}", http.dnsname);
    let label = http.dnsname.trim_end_matches(".localhost");
    let parts: Vec<&str> = label.split('-').collect();
    assert_eq!(parts.len(), 3, "{label}");
    assert!(parts[2].len() == 4 && parts[2].chars().all(|c| c.is_ascii_digit()));
    let listed = via(3).sockets().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].socket_id, http.socket_id);

    let tcp = via(2).create_socket(&sock("ssh", "tcp")).await.unwrap();
    assert_eq!(tcp.socket_tcp_ports.len(), 1);
    assert!((20000..=20999).contains(&tcp.socket_tcp_ports[0]));

    // POST /connect: a socket with one tunnel and the caller's user_name.
    let conn = via(2).connect(&sock("demo", "http")).await.unwrap();
    assert_eq!(conn.tunnels.len(), 1);
    assert_eq!(conn.user_name, u.user_name);
    assert!(conn.tunnels[0].tunnel_server.ends_with(":2222"));

    // Tunnels: create, list, show, delete, each through another node.
    let t2 = via(3).create_tunnel(&conn.socket_id).await.unwrap();
    assert_ne!(t2.local_port, conn.tunnels[0].local_port, "relay ports are unique in an account");
    assert_eq!(via(1).tunnels(&conn.socket_id).await.unwrap().len(), 2);
    let shown = via(2).tunnel(&conn.socket_id, &t2.tunnel_id).await.unwrap();
    assert_eq!((shown.tunnel_id, shown.local_port), (t2.tunnel_id.clone(), t2.local_port));
    via(1).delete_tunnel(&conn.socket_id, &t2.tunnel_id).await.unwrap();
    assert_eq!(via(3).tunnels(&conn.socket_id).await.unwrap().len(), 1);
    let e = via(2).tunnel(&conn.socket_id, &t2.tunnel_id).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));

    // Deleting a socket deletes its tunnels and frees its port and name.
    via(3).delete_socket(&tcp.socket_id).await.unwrap();
    via(1).delete_socket(&conn.socket_id).await.unwrap();
    assert_eq!(via(2).socket(&conn.socket_id).await.unwrap_err().status(), Some(StatusCode::NOT_FOUND));
    let d = c.converged().await;
    assert_eq!((d.sockets, d.tunnels), (1, 0));

    // A refreshed token works too.
    let t = via(1).refresh().await.unwrap().token;
    assert_eq!(c.api(3).with_token(t).sockets().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chosen_subdomain_or_port_is_unique_across_accounts() {
    let c = TestCluster::builder().start().await;
    let (a, _) = logged_in(&c, 1, 1).await;
    let (b, _) = logged_in(&c, 2, 2).await;
    let chosen = |name: &str, t: &str, sub: Option<&str>, port: Option<u16>| SocketCreate {
        subdomain: sub.map(String::from),
        port,
        ..sock(name, t)
    };
    let demo = a.create_socket(&chosen("web", "http", Some("Demo"), None)).await.unwrap();
    assert_eq!(demo.dnsname, "demo.localhost");
    let db = a.connect(&chosen("db", "tcp", Some("db"), Some(20500))).await.unwrap();
    assert_eq!((db.dnsname.as_str(), db.socket_tcp_ports.as_slice()), ("db.localhost", &[20500][..]));
    let before = c.converged().await;

    let status = |r: Result<mysocket_api::Socket, mysocket_api::ClientError>| {
        let e = r.unwrap_err();
        (e.status().unwrap(), e.to_string())
    };
    // Taken, by another account or the same one: 409 naming what is taken.
    let (code, msg) = status(b.create_socket(&chosen("x", "http", Some("demo"), None)).await);
    assert_eq!(code, StatusCode::CONFLICT, "{msg}");
    assert!(msg.contains("demo.localhost is taken"), "{msg}");
    let (code, msg) = status(b.create_socket(&chosen("x", "tls", None, Some(20500))).await);
    assert_eq!(code, StatusCode::CONFLICT, "{msg}");
    assert!(msg.contains("port 20500 is taken"), "{msg}");
    // Not a label, reserved, outside the range, a port for an http socket.
    for (req, want, why) in [
        (chosen("x", "http", Some("a.b"), None), StatusCode::BAD_REQUEST, "one DNS label"),
        (chosen("x", "http", Some("-x"), None), StatusCode::BAD_REQUEST, "one DNS label"),
        (chosen("x", "http", Some(&"x".repeat(64)), None), StatusCode::BAD_REQUEST, "one DNS label"),
        (chosen("x", "http", Some("ns1"), None), StatusCode::BAD_REQUEST, "reserved"),
        (chosen("x", "http", Some("www"), None), StatusCode::BAD_REQUEST, "reserved"),
        (chosen("x", "tcp", None, Some(19999)), StatusCode::BAD_REQUEST, "outside the cluster's range"),
        (chosen("x", "http", None, Some(20001)), StatusCode::UNPROCESSABLE_ENTITY, "tcp and tls sockets"),
    ] {
        let (code, msg) = status(b.create_socket(&req).await);
        assert_eq!(code, want, "{msg}");
        assert!(msg.contains(why), "{msg} should say {why}");
    }
    assert_eq!(c.converged().await.digest, before.digest, "refused requests changed nothing");

    // Deleted, the name is anyone's again.
    a.delete_socket(&demo.socket_id).await.unwrap();
    assert_eq!(b.create_socket(&chosen("x", "http", Some("demo"), None)).await.unwrap().dnsname, "demo.localhost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_isolated() {
    let c = TestCluster::builder().start().await;
    let (a, a_id) = logged_in(&c, 1, 1).await;
    let (b, b_id) = logged_in(&c, 2, 2).await;
    let s = a.connect(&sock("mine", "tcp")).await.unwrap();
    let tid = s.tunnels[0].tunnel_id.clone();
    let before = c.converged().await;

    assert!(b.sockets().await.unwrap().is_empty());
    for e in [
        b.socket(&s.socket_id).await.unwrap_err(),
        b.delete_socket(&s.socket_id).await.unwrap_err(),
        b.tunnels(&s.socket_id).await.unwrap_err(),
        b.create_tunnel(&s.socket_id).await.unwrap_err(),
        b.tunnel(&s.socket_id, &tid).await.err().unwrap(),
        b.delete_tunnel(&s.socket_id, &tid).await.unwrap_err(),
        b.get_user(&a_id).await.unwrap_err(),
    ] {
        assert_eq!(e.status(), Some(StatusCode::NOT_FOUND), "{e}");
    }
    assert_eq!(c.converged().await.digest, before.digest, "another account's calls changed state");
    assert_eq!(a.get_user(&a_id).await.unwrap().user_id, a_id);
    assert_eq!(b.get_user(&b_id).await.unwrap().user_id, b_id);
    assert_eq!(a.socket(&s.socket_id).await.unwrap().tunnels.len(), 1);
}

async fn raw(method: reqwest::Method, url: String, token: Option<&str>, body: Option<Vec<u8>>) -> (StatusCode, Value) {
    let mut r = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        r = r.header("x-access-token", t);
    }
    if let Some(b) = body {
        r = r.header("content-type", "application/json").body(b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text:?}"));
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    use reqwest::Method;
    let c = TestCluster::builder().arg("--max-http-sockets").arg("2").start().await;
    let (a, _) = logged_in(&c, 1, 1).await;
    let token = c.api(1).login(&user(1).email, &user(1).password).await.unwrap().token;
    let base = c.nodes[&2].api_url();
    a.create_socket(&sock("one", "http")).await.unwrap();
    let before = c.converged().await;

    let good_user = serde_json::to_value(user(5)).unwrap();
    let with = |k: &str, v: Value| {
        let mut u = good_user.clone();
        u[k] = v;
        serde_json::to_vec(&u).unwrap()
    };
    type Case<'a> = (Method, &'a str, Option<&'a str>, Option<Vec<u8>>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (Method::POST, "/user", None, Some(b"{not json".to_vec()), 400, "invalid JSON"),
        (Method::POST, "/user", None, Some(br#"{"name": 5}"#.to_vec()), 400, "invalid JSON"),
        (Method::POST, "/user", None, Some(br#"[]"#.to_vec()), 400, "invalid JSON"),
        (Method::POST, "/user", None, Some(vec![b' '; 200 * 1024]), 413, "larger than"),
        (Method::POST, "/user", None, Some(with("email", json!("not-an-email"))), 400, "email"),
        (Method::POST, "/user", None, Some(with("sshkey", json!("ssh-ed25519 AAAAnope"))), 400, "sshkey"),
        (Method::POST, "/user", None, Some(with("sshkey", json!(""))), 400, "sshkey"),
        (Method::POST, "/user", None, Some(with("password", json!("123"))), 400, "password"),
        (Method::POST, "/user", None, Some(with("name", json!("x".repeat(500)))), 400, "name"),
        (
            Method::POST,
            "/login",
            None,
            Some(br#"{"email":"user1@example.com","password":"wrong-one"}"#.to_vec()),
            401,
            "wrong email or password",
        ),
        (
            Method::POST,
            "/login",
            None,
            Some(br#"{"email":"nobody@example.com","password":"whatever"}"#.to_vec()),
            401,
            "wrong email or password",
        ),
        (Method::GET, "/socket", None, None, 401, "token"),
        (Method::GET, "/socket", Some("garbage"), None, 401, "token"),
        (
            Method::GET,
            "/socket",
            Some("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJ1c2VyX2lkIjoieCIsImV4cCI6OTk5OTk5OTk5OX0."),
            None,
            401,
            "token",
        ),
        (
            Method::POST,
            "/socket",
            Some(&token),
            Some(br#"{"name":"x","socket_type":"udp"}"#.to_vec()),
            400,
            "socket_type",
        ),
        (
            Method::POST,
            "/socket",
            Some(&token),
            Some(br#"{"name":"x","protected_socket":true}"#.to_vec()),
            400,
            "protected",
        ),
        (
            Method::POST,
            "/socket",
            Some(&token),
            Some(br#"{"name":"x","protected_socket":"yes"}"#.to_vec()),
            400,
            "invalid JSON",
        ),
        (
            Method::POST,
            "/socket",
            Some(&token),
            Some(br#"{"name":"x","cloud_authentication_email_allowed_addressses":["nope"]}"#.to_vec()),
            422,
            "only with cloud_authentication_enabled",
        ),
        (
            Method::POST,
            "/socket",
            Some(&token),
            Some(br#"{"name":"x","ip_allow":["10.0.0.0/99"]}"#.to_vec()),
            400,
            "not an address or a network",
        ),
        (
            Method::PATCH,
            "/socket/00000000-0000-0000-0000-000000000000",
            Some(&token),
            Some(br#"{"rate_limit":5}"#.to_vec()),
            404,
            "not found",
        ),
        (
            Method::PATCH,
            "/socket/not-a-uuid",
            Some(&token),
            Some(br#"{"rate_limit":-1}"#.to_vec()),
            400,
            "invalid JSON",
        ),
        (Method::GET, "/socket/not-a-uuid", Some(&token), None, 404, "not found"),
        (Method::DELETE, "/socket/00000000-0000-0000-0000-000000000000", Some(&token), None, 404, "not found"),
        (Method::GET, "/socket/00000000-0000-0000-0000-000000000000/tunnel", Some(&token), None, 404, "not found"),
        (Method::GET, "/no/such/path", None, None, 404, "no such endpoint"),
        (Method::POST, "/cluster/nodes", Some(&c.operator_token), Some(br#"{"id":"x"}"#.to_vec()), 400, "invalid JSON"),
        (Method::DELETE, "/cluster/nodes/abc", Some(&c.operator_token), None, 400, "node id"),
        (Method::POST, "/cluster/nodes", None, Some(br#"{"id":"x"}"#.to_vec()), 401, "operator"),
        (Method::DELETE, "/cluster/nodes/abc", Some(&token), None, 403, "operator"),
    ];
    for (m, path, tok, body, want, msg) in cases {
        let (status, v) = raw(m.clone(), format!("{base}{path}"), tok, body).await;
        assert_eq!(status.as_u16(), want, "{m} {path}: {v}");
        let message = v["message"].as_str().unwrap_or_else(|| panic!("{m} {path}: no message in {v}"));
        assert!(message.to_lowercase().contains(&msg.to_lowercase()), "{m} {path}: {message:?} should mention {msg:?}");
    }
    // A taken email (in any case): the answer of a new account, and nothing is created, so
    // sign-up does not tell a stranger which emails have accounts; the operator hears 409.
    let taken = with("email", json!(user(1).email.to_uppercase()));
    let (status, v) = raw(Method::POST, format!("{base}/user"), None, Some(taken.clone())).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(v["user_id"].as_str().is_some() && v["user_name"].as_str().is_some(), "{v}");
    let (status, v) = raw(Method::POST, format!("{base}/user"), Some(c.operator_token.as_str()), Some(taken)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert!(v["message"].as_str().unwrap().contains("already exists"), "{v}");
    // The limit: a second http socket is fine, a third is refused.
    a.create_socket(&sock("two", "https")).await.unwrap();
    let mid = c.converged().await;
    let e = a.create_socket(&sock("three", "http")).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::FORBIDDEN), "{e}");
    let after = c.converged().await;
    assert_eq!(after.digest, mid.digest, "refused requests changed state");
    assert_eq!(after.accounts, before.accounts);
    // Unknown fields are tolerated, as the original client sends extra ones (a login records
    // its token, so this comes after the digest is compared).
    let (status, _) = raw(
        Method::POST,
        format!("{base}/login"),
        None,
        Some(
            serde_json::to_vec(&json!({"email": user(1).email, "password": user(1).password, "extra": [1, 2]}))
                .unwrap(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_before_a_leader_change_still_works() {
    let mut c = TestCluster::builder().start().await;
    let (_, _) = logged_in(&c, 1, 1).await;
    let token = c.api(2).login(&user(1).email, &user(1).password).await.unwrap().token;
    let leader = c.agreed_leader(Duration::from_secs(10)).await;
    c.kill9(leader);
    let new_leader = c.agreed_leader(Duration::from_secs(20)).await;
    assert_ne!(leader, new_leader);
    let other = c.running().into_iter().find(|id| *id != new_leader).unwrap();
    let api = c.api(other).with_token(token);
    api.create_socket(&sock("after", "tls")).await.unwrap();
    assert_eq!(api.sockets().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_routes_and_the_committed_copy() {
    let c = TestCluster::builder().nodes(1).start().await;
    let base = c.nodes[&1].api_url();
    let doc: Value = reqwest::get(format!("{base}/openapi.json")).await.unwrap().json().await.unwrap();
    let committed_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&committed_path, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
    }
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(&committed_path).unwrap()).unwrap();
    assert_eq!(doc, committed, "the API changed: review it and rerun with UPDATE_OPENAPI=1");

    // Every documented path and method is routed (an unauthenticated call is refused by the
    // handler, not answered by the fallback or with 405).
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 15);
    for (path, methods) in paths {
        let concrete = path
            .replace("{socket_id}", "00000000-0000-0000-0000-000000000001")
            .replace("{tunnel_id}", "00000000-0000-0000-0000-000000000002")
            .replace("{user_id}", "00000000-0000-0000-0000-000000000003")
            .replace("{id}", "99");
        for method in methods.as_object().unwrap().keys() {
            let m: reqwest::Method = method.to_uppercase().parse().unwrap();
            let resp =
                reqwest::Client::new().request(m.clone(), format!("{base}{concrete}")).body("{}").send().await.unwrap();
            let status = resp.status();
            let text = resp.text().await.unwrap();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is documented but not routed");
            assert!(!text.contains("no such endpoint"), "{method} {path} is documented but not routed");
        }
    }
}

/// Sends `x-access-token: <cred>` to every node and returns the statuses of `GET /socket`.
async fn statuses(c: &TestCluster, cred: &str) -> Vec<StatusCode> {
    let mut out = Vec::new();
    for id in 1..=3 {
        out.push(raw(reqwest::Method::GET, format!("{}/socket", c.nodes[&id].api_url()), Some(cred), None).await.0);
    }
    out
}

/// Polls until every node refuses `cred`; returns how long that took from `since`.
async fn refused_everywhere(c: &TestCluster, cred: &str, since: std::time::Instant) -> Duration {
    loop {
        if statuses(c, cred).await.iter().all(|s| *s == StatusCode::UNAUTHORIZED) {
            return since.elapsed();
        }
        assert!(since.elapsed() < Duration::from_secs(5), "a revoked credential still works");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// API keys and login tokens: made, listed (never their secrets), used through every node at
/// once, revoked by their owner or an operator and then refused by every node within a
/// second; another account can neither see nor revoke them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_and_tokens_are_listed_and_revoked_on_every_node() {
    let c = TestCluster::builder().start().await;
    let (alice, _) = logged_in(&c, 1, 1).await;
    let (bob, _) = logged_in(&c, 2, 2).await;
    let t1 = alice.token().unwrap().to_string();
    let t2 = c.api(3).login(&user(1).email, &user(1).password).await.unwrap().token;

    // A key made through node 1 works at once through every node.
    let made =
        alice.create_api_key(&mysocket_api::ApiKeyCreate { name: "ci".into(), expires_in_days: None }).await.unwrap();
    assert!(made.key.starts_with("mysk_"), "{}", made.key);
    assert_eq!(made.credential.expires_at, None);
    assert_eq!(statuses(&c, &made.key).await, [StatusCode::OK; 3]);
    let with_key = c.api(2).with_token(made.key.clone());
    with_key.create_socket(&sock("from-ci", "http")).await.unwrap();
    assert_eq!(alice.sockets().await.unwrap().len(), 1, "the key acts as its account");
    assert_eq!(with_key.get_user("me").await.unwrap().email, user(1).email);
    let later = alice
        .create_api_key(&mysocket_api::ApiKeyCreate { name: "nightly".into(), expires_in_days: Some(30) })
        .await
        .unwrap();
    assert!(later.credential.expires_at.is_some());

    // Refused, changing nothing: a taken name, a bad name, a bad expiry, unknown fields.
    let before = c.converged().await.digest;
    let e = alice.create_api_key(&mysocket_api::ApiKeyCreate { name: "ci".into(), expires_in_days: None }).await;
    assert_eq!(e.unwrap_err().status(), Some(StatusCode::CONFLICT));
    for (name, days) in
        [("", None), ("has space", None), ("x".repeat(65).as_str(), None), ("ok", Some(0)), ("ok", Some(4000))]
    {
        let e = alice.create_api_key(&mysocket_api::ApiKeyCreate { name: name.into(), expires_in_days: days }).await;
        assert_eq!(e.unwrap_err().status(), Some(StatusCode::BAD_REQUEST), "{name:?} {days:?}");
    }
    let url = |id: u64, path: &str| format!("{}{path}", c.nodes[&id].api_url());
    let (s, v) =
        raw(reqwest::Method::POST, url(1, "/apikeys"), Some(&t1), Some(br#"{"name":"x","admin":true}"#.to_vec())).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = raw(reqwest::Method::POST, url(1, "/apikeys"), None, Some(br#"{"name":"x"}"#.to_vec())).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = raw(
        reqwest::Method::POST,
        url(1, "/apikeys"),
        Some(c.operator_token.as_str()),
        Some(br#"{"name":"x"}"#.to_vec()),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(c.converged().await.digest, before, "a refused request changed state");

    // The owner's list: both tokens and both keys, the one in use marked, no secret anywhere.
    let (s, listed) = raw(reqwest::Method::GET, url(3, "/credentials"), Some(&t2), None).await;
    assert_eq!(s, StatusCode::OK);
    let text = listed.to_string();
    assert!(!text.contains(&made.key[38..]) && !text.contains("secret") && !text.contains("hash"), "{text}");
    let kinds: Vec<(&str, &str, bool)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["kind"].as_str().unwrap(), c["name"].as_str().unwrap(), c["current"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("token", "login", false), ("token", "login", false), ("api_key", "ci", false), ("api_key", "nightly", false)]
            .iter()
            .enumerate()
            .map(|(i, (k, n, _))| (*k, *n, i == 1))
            .collect::<Vec<_>>(),
        "{text}"
    );
    let id_of = |name: &str, kind: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["kind"] == kind && c["name"] == name)
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let t1_id = id_of("login", "token")[0].clone();

    // Another account sees none of them and cannot revoke them (404, as for a missing one),
    // nor name an account.
    assert!(bob.credentials(None).await.unwrap().iter().all(|c| c.kind == "token"));
    assert_eq!(bob.credentials(None).await.unwrap().len(), 1);
    let e = bob.revoke_credential(&made.credential.id, None).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
    let e = bob.credentials(Some(&user(1).email)).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::FORBIDDEN));
    assert_eq!(statuses(&c, &made.key).await, [StatusCode::OK; 3], "another account revoked a key");

    // Revoked through node 1: refused by every node within a second.
    let start = std::time::Instant::now();
    alice.revoke_credential(&made.credential.id, None).await.unwrap();
    let took = refused_everywhere(&c, &made.key, start).await;
    assert!(took < Duration::from_secs(1), "revocation took {took:?}");
    eprintln!("API key refused by all three nodes {took:?} after the revocation was sent");
    let e = alice.revoke_credential(&made.credential.id, None).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::NOT_FOUND), "revoked twice");
    // A guessed secret for a live key's id is no key.
    let guessed = format!("{}{}", &later.key[..38], "0".repeat(64));
    assert_eq!(statuses(&c, &guessed).await, [StatusCode::UNAUTHORIZED; 3]);

    // A login token revoked by its owner (with another token), then one by the operator.
    let start = std::time::Instant::now();
    c.api(2).with_token(t2.clone()).revoke_credential(&t1_id, None).await.unwrap();
    refused_everywhere(&c, &t1, start).await;
    assert_eq!(statuses(&c, &t2).await, [StatusCode::OK; 3]);
    let op = c.operator(3);
    let seen = op.credentials(Some(&user(1).email)).await.unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let t2_id = seen.iter().find(|c| c.kind == "token").unwrap().id.clone();
    let e = op.revoke_credential(&t2_id, Some("nobody@example.com")).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
    let start = std::time::Instant::now();
    op.revoke_credential(&t2_id, Some(&user(1).email)).await.unwrap();
    refused_everywhere(&c, &t2, start).await;
    assert_eq!(statuses(&c, &later.key).await, [StatusCode::OK; 3], "only what was revoked is refused");
    let (s, _) =
        raw(reqwest::Method::GET, url(2, "/credentials?account=x&account=y"), Some(c.operator_token.as_str()), None)
            .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = raw(reqwest::Method::GET, url(2, "/credentials"), Some(c.operator_token.as_str()), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}
