//! The edge's API port faces the internet: the attacks a stranger or an ordinary account would
//! try against a real cluster, each answered without changing anything (invariants I8, I9),
//! and secrets kept out of every log line.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mysocket_api::SocketCreate;
use mysocket_testkit::*;
use reqwest::Method;
use reqwest::StatusCode;
use serde_json::Value;

/// A call with an optional credential in `Authorization: Bearer`: status and JSON body.
async fn call(method: Method, url: String, bearer: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
    let mut r = reqwest::Client::new().request(method, url);
    if let Some(t) = bearer {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_accounts_cannot_administer_the_cluster() {
    let c = TestCluster::builder().start().await;
    c.api(1).create_user(&user(1)).await.unwrap();
    let token = c.api(1).login(&user(1).email, &user(1).password).await.unwrap().token;
    let base = c.nodes[&2].api_url();

    // A stranger's "node": a plain listener that would receive the log if it became a voter.
    let fake = tokio::net::TcpListener::bind(format!("{}:7071", c.node_ip(7))).await.unwrap();
    let fake_addr = fake.local_addr().unwrap().to_string();
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let listener = tokio::spawn(async move {
        while let Ok((_s, _)) = fake.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let before = c.converged().await;

    let add = serde_json::json!({"id": 99, "raft_addr": fake_addr});
    let attacks: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::POST, "/cluster/nodes", Some(add)),
        (Method::DELETE, "/cluster/nodes/2", None),
        (Method::DELETE, "/cluster/nodes/3", None),
        (Method::GET, "/cluster/digest", None),
        (Method::GET, "/metrics", None),
    ];
    for (m, path, body) in &attacks {
        let (status, v) = call(m.clone(), format!("{base}{path}"), None, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "anonymous {m} {path}: {v}");
        assert!(v["message"].as_str().unwrap().contains("operator credential"), "{v}");
        let (status, v) = call(m.clone(), format!("{base}{path}"), Some(&token), body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "an account's {m} {path}: {v}");
        // The cluster credential is for the internal port only.
        let (status, v) = call(m.clone(), format!("{base}{path}"), Some(&c.secret), body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "the cluster credential on {m} {path}: {v}");
    }
    // Nothing changed: the same registry (no id retired, no tunnel released), three voters, and
    // the stranger's listener never heard from the cluster.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = c.converged().await;
    assert_eq!((after.digest.as_str(), after.accounts), (before.digest.as_str(), before.accounts));
    let view = c.operator(1).cluster().await.unwrap();
    let voters: Vec<u64> = view.nodes.iter().filter(|n| n.voter == Some(true)).map(|n| n.id).collect();
    assert_eq!(voters, vec![1, 2, 3]);
    assert_eq!(reached.load(Ordering::SeqCst), 0, "the stranger's node was contacted");
    listener.abort();

    // What anyone may see: the leader and the addresses clients dial, no internal addresses.
    let (status, public) = call(Method::GET, format!("{base}/cluster"), None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(public["leader"].as_u64().is_some() && public["ssh_host_key"].as_str().is_some(), "{public}");
    for n in public["nodes"].as_array().unwrap() {
        assert!(n["api_addr"].as_str().unwrap().ends_with(":7070") && n["ssh_addr"].as_str().is_some(), "{n}");
        for hidden in ["raft_addr", "voter", "last_applied", "tunnels"] {
            assert!(n.get(hidden).is_none(), "anonymous GET /cluster shows {hidden}: {public}");
        }
    }
    let (_, with_token) = call(Method::GET, format!("{base}/cluster"), Some(&token), None).await;
    assert!(!with_token.to_string().contains(":7071"), "an account sees internal addresses: {with_token}");
    let (_, full) = call(Method::GET, format!("{base}/cluster"), Some(&c.operator_token), None).await;
    assert!(full.to_string().contains(&c.node_raft_addr(3)), "{full}");

    // The dashboard: health in aggregate for anyone, the detail behind the operator's password.
    let http = reqwest::Client::new();
    let page = http.get(format!("{base}/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("3 nodes") && page.contains("has a leader"), "{page}");
    for n in 1..=3 {
        assert!(!page.contains(&c.node_ip(n)), "anonymous dashboard shows node {n}'s address: {page}");
    }
    let r = http.get(format!("{base}/operator")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic"));
    let r = http.get(format!("{base}/operator")).basic_auth("x", Some(&token)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "an account's token is not the operator's");
    let page = c.operator_page(2).await;
    assert!(page.contains(&format!("<td>{}:7070</td>", c.node_ip(3))), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_signup_and_the_cluster_caps_hold() {
    let c = TestCluster::builder()
        .nodes(1)
        .arg("--signup")
        .arg("closed")
        .arg("--max-accounts")
        .arg("2")
        .arg("--max-tcp-sockets")
        .arg("1")
        .start()
        .await;
    let base = c.nodes[&1].api_url();
    let body = || Some(serde_json::to_value(user(1)).unwrap());
    let (status, v) = call(Method::POST, format!("{base}/user"), None, body()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert!(v["message"].as_str().unwrap().contains("sign-up is closed"), "{v}");
    // The operator creates accounts; the cap holds.
    c.operator(1).create_user(&user(1)).await.unwrap();
    let token = c.api(1).login(&user(1).email, &user(1).password).await.unwrap().token;
    let (status, _) =
        call(Method::POST, format!("{base}/user"), Some(&token), Some(serde_json::to_value(user(2)).unwrap())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "an account cannot sign others up");
    c.operator(1).create_user(&user(2)).await.unwrap();
    let e = c.operator(1).create_user(&user(3)).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::FORBIDDEN), "{e}");
    assert!(e.to_string().contains("maximum of 2 accounts"), "{e}");
    assert_eq!(c.converged().await.accounts, 2);
    // One tcp/tls port per account here: the second is refused, whatever its type.
    let a = c.api(1).with_token(token);
    a.create_socket(&SocketCreate { name: "t".into(), socket_type: Some("tcp".into()), ..Default::default() })
        .await
        .unwrap();
    let e = a
        .create_socket(&SocketCreate { name: "u".into(), socket_type: Some("tls".into()), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::FORBIDDEN), "{e}");
    assert_eq!(a.sockets().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_rules_are_applied_or_refused_never_ignored() {
    let c = TestCluster::builder().nodes(1).start().await;
    c.api(1).create_user(&user(1)).await.unwrap();
    let token = c.api(1).login(&user(1).email, &user(1).password).await.unwrap().token;
    let base = c.nodes[&1].api_url();
    let refused = [
        (
            serde_json::json!({"name": "p", "socket_type": "tcp", "protected_socket": true,
            "protected_username": "u", "protected_password": "secret1"}),
            "http and https sockets only",
        ),
        (
            serde_json::json!({"name": "p", "socket_type": "tls", "protected_socket": true,
            "protected_username": "u", "protected_password": "secret1"}),
            "http and https sockets only",
        ),
        (
            serde_json::json!({"name": "c", "socket_type": "http", "cloud_authentication_enabled": true,
            "cloud_authentication_email_allowed_addressses": ["a@example.org"]}),
            "no identity provider",
        ),
        (
            serde_json::json!({"name": "c", "cloud_authentication_email_allowed_domains": ["example.org"]}),
            "only with cloud_authentication_enabled",
        ),
        (
            serde_json::json!({"name": "c", "socket_type": "tcp", "cloud_authentication_enabled": true,
            "cloud_authentication_email_allowed_domains": ["example.org"]}),
            "http and https sockets only",
        ),
        (
            serde_json::json!({"name": "c", "protected_username": "u", "protected_password": "secret1"}),
            "protected_socket",
        ),
    ];
    for path in ["/socket", "/connect"] {
        for (body, why) in &refused {
            let (status, v) = call(Method::POST, format!("{base}{path}"), Some(&token), Some(body.clone())).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path} {body}: {v}");
            assert!(v["message"].as_str().unwrap().contains(why), "{path} {body}: {v}");
        }
    }
    let a = c.api(1).with_token(token);
    assert!(a.sockets().await.unwrap().is_empty(), "a refused socket was created");
    assert_eq!(c.converged().await.sockets, 0);

    // A protected http socket keeps only a hash of its password, and never gives it back.
    let s = a.create_socket(&protected_http("web")).await.unwrap();
    assert_eq!((s.protected_socket, s.protected_password.as_str()), (true, ""));
    let (_, shown) = call(Method::GET, format!("{base}/socket/{}", s.socket_id), a.token(), None).await;
    let (_, listed) = call(Method::GET, format!("{base}/socket"), a.token(), None).await;
    for v in [&shown, &listed] {
        assert!(!v.to_string().contains("open sesame") && !v.to_string().contains("hmac-sha256"), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_even_at_trace_level() {
    let c = TestCluster::builder().log("trace").start().await;
    let u = user(1);
    c.api(2).create_user(&u).await.unwrap();
    let token = c.api(3).login(&u.email, &u.password).await.unwrap().token;
    let a = c.api(2).with_token(token.clone());
    let s = a
        .create_socket(&SocketCreate {
            name: "web".into(),
            protected_socket: true,
            protected_username: Some("bob".into()),
            protected_password: Some("basic-auth-secret".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    // A visitor with the password, through a node that relays nothing (no tunnel: 503), once
    // that node has the socket too.
    let digest = c.converged().await;
    assert_eq!(digest.sockets, 1);
    let r = reqwest::Client::new()
        .get(format!("http://{}:8080/", c.nodes[&1].ip))
        .header("host", &s.dnsname)
        .basic_auth("bob", Some("basic-auth-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let signature = token.rsplit('.').next().unwrap().to_string();
    let secrets = [
        ("the account's password", u.password.clone()),
        ("an argon2 hash", "$argon2id$".to_string()),
        ("the account's token", signature),
        ("the Basic-auth password", "basic-auth-secret".to_string()),
        ("the Basic-auth hash", "hmac-sha256$".to_string()),
        ("the cluster credential", c.secret.clone()),
        ("the operator token", c.operator_token.clone()),
        ("a private key", "PRIVATE KEY".to_string()),
        ("the token key", "token_key".to_string()),
    ];
    // The entries are logged (openraft at debug and trace), by kind and id.
    assert!((1..=3).any(|id| c.log(id).contains("CreateAccount(")), "no node logged the account's entry");
    for id in 1..=3 {
        let log = c.log(id);
        assert!(log.lines().count() > 100, "node {id} logged at trace level: {} lines", log.lines().count());
        for (what, secret) in &secrets {
            if let Some(line) = log.lines().find(|l| l.contains(secret.as_str())) {
                panic!("node {id}'s log shows {what}: {}", &line[..line.len().min(400)]);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_and_login_do_not_tell_whether_an_email_has_an_account() {
    let c = TestCluster::builder().nodes(1).start().await;
    let base = c.nodes[&1].api_url();
    c.api(1).create_user(&user(1)).await.unwrap();
    let before = c.converged().await;
    // Login: a wrong password and an unknown email get the same answer.
    let wrong = serde_json::json!({"email": user(1).email, "password": "not-the-password"});
    let unknown = serde_json::json!({"email": "nobody@example.com", "password": "not-the-password"});
    let a = call(Method::POST, format!("{base}/login"), None, Some(wrong)).await;
    let b = call(Method::POST, format!("{base}/login"), None, Some(unknown)).await;
    assert_eq!(a, b);
    assert_eq!(a.0, StatusCode::UNAUTHORIZED);
    // Sign-up: a taken email is answered like a free one, and nothing changes; the account's
    // owner still logs in with their own password, not the stranger's.
    let mut taken = user(9);
    taken.email = user(1).email.to_uppercase();
    let (s1, v1) = call(Method::POST, format!("{base}/user"), None, Some(serde_json::to_value(&taken).unwrap())).await;
    let (s2, v2) = call(Method::POST, format!("{base}/user"), None, Some(serde_json::to_value(user(2)).unwrap())).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&v1), keys(&v2), "{v1} / {v2}");
    assert_eq!(c.converged().await.accounts, before.accounts + 1, "only the free email made an account");
    c.api(1).login(&user(1).email, &user(1).password).await.unwrap();
    assert!(c.api(1).login(&user(1).email, &user(9).password).await.is_err());
}
