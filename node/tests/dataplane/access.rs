//! Who may reach a socket: address lists and rate limits on http and tcp sockets (same node and
//! relayed), and cloud authentication through a real OpenID Connect provider
//! (`oidc-provider-mock`, installed by `scripts/test.sh`), through every node.

use std::net::IpAddr;
use std::time::Duration;
use std::time::Instant;

use mysocket_api::SocketCreate;
use mysocket_api::SocketUpdate;
use mysocket_testkit::*;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

use crate::support::*;

/// A GET of `/page` on `host` through the node at `node_ip`, from the address `from`.
async fn get_from(from: &str, node_ip: &str, host: &str, cookie: Option<&str>) -> reqwest::Response {
    let http = reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut r = http.get(format!("http://{node_ip}:8080/page?x=1")).header("host", host);
    if let Some(c) = cookie {
        r = r.header("cookie", c);
    }
    r.send().await.unwrap()
}

/// A tcp connection from `from` to `ip:port`: what it answers to `ping` (empty: closed).
async fn tcp_from(from: &str, ip: &str, port: u16) -> Vec<u8> {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let Ok(mut c) = s.connect(format!("{ip}:{port}").parse().unwrap()).await else { return Vec::new() };
    if c.write_all(b"ping").await.is_err() {
        return Vec::new();
    }
    let mut buf = vec![0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].to_vec(),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_lists_and_rate_limits_apply_on_every_node_before_any_relay() {
    let c = TestCluster::builder().nodes(3).start().await;
    c.wait_ready().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "ada").await;
    let (hog, visitor, other) = (c.node_ip(5), c.node_ip(6), c.node_ip(7));
    let web = api
        .connect(&SocketCreate { name: "web".into(), ip_deny: vec![format!("{hog}/32")], ..Default::default() })
        .await
        .unwrap();
    assert_eq!(web.ip_deny, vec![format!("{hog}/32")]);
    let (origin_port, served) = counting_origin().await;
    let _ssh = ssh_forward(&key, &u.user_name, &c.nodes[&1].ip, web.tunnels[0].local_port, origin_port);
    answered(&c.nodes[&2].ip, &web.dnsname, "the tunnel through node 2").await;

    // Denied: 403 on the node it reaches (the holder, and a node that would relay), and
    // nothing reaches the service.
    let before = served.load(std::sync::atomic::Ordering::SeqCst);
    for n in [1, 2, 3] {
        let r = get_from(&hog, &c.nodes[&n].ip, &web.dnsname, None).await;
        assert_eq!(r.status(), 403, "node {n}");
        assert_eq!(get_from(&visitor, &c.nodes[&n].ip, &web.dnsname, None).await.status(), 200, "node {n}");
    }
    let reached = served.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!(reached <= 3, "the denied address reached the service: {reached} connections");

    // An allow list, set while the tunnel stays connected: within a second on every node.
    let changed = Instant::now();
    let update = SocketUpdate { ip_allow: Some(vec![visitor.clone()]), ip_deny: Some(vec![]), ..Default::default() };
    let web2 = api.update_socket(&web.socket_id, &update).await.unwrap();
    assert_eq!((web2.ip_allow, web2.ip_deny), (vec![format!("{visitor}/32")], vec![]));
    for n in [1, 2, 3] {
        eventually(Duration::from_secs(5), "the allow list on every node", || {
            let (other, ip, host) = (other.clone(), c.nodes[&n].ip.clone(), web.dnsname.clone());
            async move { (get_from(&other, &ip, &host, None).await.status() == 403).then_some(()) }
        })
        .await;
    }
    eprintln!("allow list applied on three nodes after {:?}", changed.elapsed());
    assert!(changed.elapsed() < Duration::from_secs(3), "{:?}", changed.elapsed());
    assert_eq!(get_from(&hog, &c.nodes[&2].ip, &web.dnsname, None).await.status(), 403);
    assert_eq!(get_from(&visitor, &c.nodes[&2].ip, &web.dnsname, None).await.status(), 200);

    // A rate limit per visitor: 3 per second, counted where the request arrives.
    let update = SocketUpdate { ip_allow: Some(vec![]), rate_limit: Some(3), ..Default::default() };
    api.update_socket(&web.socket_id, &update).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for n in [1, 2] {
        let ip = c.nodes[&n].ip.clone();
        let mut statuses = Vec::new();
        let mut retry = None;
        for _ in 0..8 {
            let r = get_from(&visitor, &ip, &web.dnsname, None).await;
            if r.status() == 429 {
                retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            }
            statuses.push(r.status().as_u16());
        }
        assert!(statuses.iter().filter(|s| **s == 200).count() >= 3, "node {n}: {statuses:?}");
        assert!(statuses.contains(&429), "node {n}: {statuses:?}");
        assert_eq!(retry.as_deref(), Some("1"), "node {n}");
        // Another visitor has a bucket of its own.
        assert_eq!(get_from(&other, &ip, &web.dnsname, None).await.status(), 200, "node {n}");
    }

    // A tcp socket: the deny list and the rate limit close the connection before a byte.
    let tcp = api
        .connect(&SocketCreate {
            name: "t".into(),
            socket_type: Some("tcp".into()),
            ip_deny: vec![hog.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    let port = tcp.socket_tcp_ports[0];
    let _ssh2 = ssh_forward(&key, &u.user_name, &c.nodes[&1].ip, tcp.tunnels[0].local_port, echo_origin().await);
    for n in [1, 2] {
        let ip = c.nodes[&n].ip.clone();
        eventually(Duration::from_secs(20), "the tcp socket echoes", || {
            let (visitor, ip) = (visitor.clone(), ip.clone());
            async move { (tcp_from(&visitor, &ip, port).await == b"ping").then_some(()) }
        })
        .await;
        assert_eq!(tcp_from(&hog, &ip, port).await, b"", "node {n}: the denied address got through");
    }
    api.update_socket(&tcp.socket_id, &SocketUpdate { rate_limit: Some(2), ..Default::default() }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(tcp_from(&visitor, &c.nodes[&2].ip, port).await == b"ping");
    }
    assert!(answers.iter().filter(|a| **a).count() >= 2 && answers.contains(&false), "{answers:?}");

    // Counted by socket type and reason.
    let m = scrape(c.nodes[&2].ip.clone(), &c.operator_token).await;
    for (kind, why) in [("http", "address"), ("http", "rate_limit"), ("tcp", "address"), ("tcp", "rate_limit")] {
        let key = format!("mysocket_visitors_refused_total{{type=\"{kind}\",reason=\"{why}\"}}");
        assert!(sample(&m, &key) >= 1.0, "{key}");
    }

    // Bad lists change nothing.
    for bad in [
        serde_json::json!({"ip_allow": ["10.0.0.0/33"]}),
        serde_json::json!({"ip_deny": ["example.com"]}),
        serde_json::json!({"rate_limit": 1_000_000}),
        serde_json::json!({"protected_socket": true, "protected_username": "u", "protected_password": "secret1"}),
        serde_json::json!({"cloud_authentication_enabled": true, "cloud_authentication_email_allowed_domains": ["example.com"]}),
    ] {
        let r = reqwest::Client::new()
            .patch(format!("{}/socket/{}", c.nodes[&1].api_url(), tcp.socket_id))
            .header("x-access-token", api.token().unwrap())
            .json(&bad)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert!(status == 400 || status == 422, "{bad}: {status}");
        assert!(r.text().await.unwrap().contains("message"), "{bad}");
    }
    let now = api.socket(&tcp.socket_id).await.unwrap();
    assert_eq!((now.ip_deny, now.rate_limit, now.protected_socket), (vec![format!("{hog}/32")], 2, false));
}

/// A client that follows no redirect and keeps no cookie: each step of a login is seen.
fn plain() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The `name=value` part of the response's Set-Cookie for `name` (or, for a name ending in
/// `_`, the first whose name starts so).
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    let named = |v: &&str| match name.ends_with('_') {
        true => v.starts_with(name),
        false => v.starts_with(&format!("{name}=")),
    };
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(named)
        .map(|v| v.split(';').next().unwrap().to_string())
}

/// One sign-in's steps up to the provider's redirect back: the callback's path and query
/// and the login cookie.
async fn to_callback(node_ip: &str, host: &str, email: &str) -> (String, String) {
    let r = plain().get(format!("http://{node_ip}:8080/page?x=1")).header("host", host).send().await.unwrap();
    assert_eq!(r.status(), 302, "{}", r.text().await.unwrap());
    let login = set_cookie(&r, "mysocket_login_").expect("a login cookie");
    let all: Vec<_> = r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert!(
        all.iter().all(|c| c.contains("HttpOnly") && c.contains("SameSite=Lax") && !c.contains("Domain")),
        "{all:?}"
    );
    let to_provider = r.headers()["location"].to_str().unwrap().to_string();
    // The provider's page, then its form: sign in as `email`.
    let page = plain().get(&to_provider).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let back = plain().post(&to_provider).form(&[("sub", email)]).send().await.unwrap();
    assert_eq!(back.status(), 302, "{}", back.text().await.unwrap());
    let back = reqwest::Url::parse(back.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(back.host_str(), Some(host), "back to the socket's host");
    assert_eq!(back.path(), "/.mysocket/callback");
    (format!("{}?{}", back.path(), back.query().unwrap()), login)
}

/// The callback through `node_ip` with `login`: the response.
async fn callback(node_ip: &str, host: &str, path: &str, login: &str) -> reqwest::Response {
    plain()
        .get(format!("http://{node_ip}:8080{path}"))
        .header("host", host)
        .header("cookie", login)
        .send()
        .await
        .unwrap()
}

/// A whole sign-in through `node_ip`: the session cookie.
async fn sign_in(node_ip: &str, host: &str, email: &str) -> String {
    let (path, login) = to_callback(node_ip, host, email).await;
    let r = callback(node_ip, host, &path, &login).await;
    assert_eq!(r.status(), 302, "{}", r.text().await.unwrap());
    assert_eq!(r.headers()["location"], "/page?x=1");
    set_cookie(&r, "mysocket_session").expect("a session cookie")
}

async fn visit(node_ip: &str, host: &str, cookie: Option<&str>, extra: Option<(&str, &str)>) -> (u16, String) {
    let mut r = plain().get(format!("http://{node_ip}:8080/page?x=1")).header("host", host);
    if let Some(c) = cookie {
        r = r.header("cookie", c);
    }
    if let Some((k, v)) = extra {
        r = r.header(k, v);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_authentication_lets_only_allowed_verified_emails_through_on_every_node() {
    let provider = OidcProvider::start(free_port()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = with_oidc_provider(TestCluster::builder().nodes(3).log("trace"), &provider, dir.path()).await;
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "ada").await;
    let team = SocketCreate {
        name: "team".into(),
        cloud_authentication_enabled: true,
        cloud_authentication_email_allowed_addressses: vec!["Alice@Example.com".into()],
        ..Default::default()
    };
    let web = api.connect(&team).await.unwrap();
    assert_eq!(web.cloud_authentication_email_allowed_addressses, vec!["alice@example.com"]);
    let (origin_port, served) = counting_origin().await;
    let _ssh = ssh_forward(&key, &u.user_name, &c.nodes[&1].ip, web.tunnels[0].local_port, origin_port);
    let host = web.dnsname.clone();
    let ips: Vec<String> = (1..=3).map(|n| c.nodes[&n].ip.clone()).collect();
    let ip = |n: u64| ips[n as usize - 1].clone();

    // No session: off to the provider from every node, for every method and for upgrades;
    // nothing reaches the service.
    for n in [1, 2, 3] {
        let (status, _) = visit(&ip(n), &host, None, None).await;
        assert_eq!(status, 302, "node {n}");
        let post =
            plain().post(format!("http://{}:8080/form", ip(n))).header("host", &host).body("x=1").send().await.unwrap();
        assert_eq!(post.status(), 302, "node {n}");
        let (status, _) = visit(&ip(n), &host, None, Some(("upgrade", "websocket"))).await;
        assert_eq!(status, 302, "node {n}: an upgrade");
    }
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 0, "a visitor without a session reached the service");

    // Alice signs in through node 1; her session works on node 3, and the service gets her
    // verified email, never the one a visitor sends.
    let alice = sign_in(&ip(1), &host, "alice@example.com").await;
    for n in [1, 2, 3] {
        let (status, body) =
            visit(&ip(n), &host, Some(&alice), Some(("x-mysocket-email", "mallory@example.com"))).await;
        assert_eq!(status, 200, "node {n}: {body}");
        let body = body.to_ascii_lowercase();
        assert!(body.contains("x-mysocket-email: alice@example.com"), "node {n}: {body}");
        assert!(!body.contains("mallory"), "node {n}: the visitor's own identity field reached the service: {body}");
    }

    // HTTP/2 over TLS (hyper's path) and an upgrade: the same rules, the same email.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(c.data_dir(1).join("ca.pem")).unwrap()).unwrap();
    let h2 = reqwest::Client::builder()
        .add_root_certificate(ca)
        .http2_prior_knowledge()
        .redirect(reqwest::redirect::Policy::none())
        .resolve(&host, format!("{}:8443", ip(2)).parse().unwrap())
        .build()
        .unwrap();
    let url = format!("https://{host}:8443/page");
    let r = h2.get(&url).send().await.unwrap();
    assert_eq!((r.version(), r.status().as_u16()), (reqwest::Version::HTTP_2, 302));
    assert!(set_cookie(&r, "mysocket_login_").unwrap_or_default().len() > 20);
    let all: Vec<_> = r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert!(all.iter().all(|c| c.contains("; Secure")), "https cookies are Secure: {all:?}");
    let r = h2.get(&url).header("cookie", &alice).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().to_ascii_lowercase().contains("x-mysocket-email: alice@example.com"));
    let (status, body) = visit(&ip(3), &host, Some(&alice), Some(("upgrade", "websocket"))).await;
    assert_eq!(status, 200, "an upgrade with a session: {body}");
    assert!(body.to_ascii_lowercase().contains("x-mysocket-email: alice@example.com"), "{body}");

    // Bob is verified but not allowed: a 403 naming him, with a way out, on every node.
    let bob = sign_in(&ip(2), &host, "bob@other.org").await;
    for n in [1, 2, 3] {
        let (status, body) = visit(&ip(n), &host, Some(&bob), None).await;
        assert_eq!(status, 403, "node {n}");
        assert!(body.contains("bob@other.org") && body.contains("/.mysocket/signout"), "node {n}: {body}");
    }

    // Carol's email is not verified: no session.
    let (path, login) = to_callback(&ip(1), &host, "carol@example.com").await;
    let r = callback(&ip(1), &host, &path, &login).await;
    assert_eq!(r.status(), 403);
    assert!(set_cookie(&r, "mysocket_session").is_none());
    assert!(r.text().await.unwrap().contains("not verified"));

    // A tampered state, a callback without its login cookie, and a replayed code: refused.
    let (path, login) = to_callback(&ip(1), &host, "alice@example.com").await;
    let tampered = path.replace("state=", "state=x");
    assert_eq!(callback(&ip(2), &host, &tampered, &login).await.status(), 403, "tampered state");
    assert_eq!(
        plain().get(format!("http://{}:8080{path}", ip(2))).header("host", &host).send().await.unwrap().status(),
        403,
        "no login cookie"
    );
    let first = callback(&ip(2), &host, &path, &login).await;
    assert_eq!(first.status(), 302);
    let code = reqwest::Url::parse(&format!("http://x{path}")).unwrap();
    let code = code.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    let replay = callback(&ip(3), &host, &path, &login).await;
    assert_eq!(replay.status(), 403, "a replayed code");
    assert!(set_cookie(&replay, "mysocket_session").is_none());

    // Forged cookies: a changed payload, and a session for another socket.
    let value = alice.split_once('=').unwrap().1;
    let (body, tag) = value.split_once('.').unwrap();
    let forged = format!("mysocket_session={}x.{tag}", &body[..body.len() - 1]);
    assert_eq!(visit(&ip(1), &host, Some(&forged), None).await.0, 302, "a changed payload");
    let other = api.create_socket(&team).await.unwrap();
    assert_eq!(visit(&ip(1), &other.dnsname, Some(&alice), None).await.0, 302, "another socket's session");

    // Allowing bob's domain applies to his session on every node, tunnels untouched.
    let update = SocketUpdate {
        cloud_authentication_email_allowed_domains: Some(vec!["other.org".into()]),
        ..Default::default()
    };
    api.update_socket(&web.socket_id, &update).await.unwrap();
    for n in [1, 2, 3] {
        eventually(Duration::from_secs(3), "bob is let in", || {
            let (ip, host, bob) = (ip(n), host.clone(), bob.clone());
            async move { (visit(&ip, &host, Some(&bob), None).await.0 == 200).then_some(()) }
        })
        .await;
    }

    // The key the sessions are signed with is the cluster's: a restarted node accepts them.
    c.sigterm(2);
    c.restart(2);
    c.wait_ready().await;
    eventually(Duration::from_secs(20), "node 2 back with alice's session", || {
        let (ip, host, alice) = (ip(2), host.clone(), alice.clone());
        async move { (visit(&ip, &host, Some(&alice), None).await.0 == 200).then_some(()) }
    })
    .await;

    // Signing out clears the session cookie.
    let r = plain().get(format!("http://{}:8080/.mysocket/signout", ip(1))).header("host", &host).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(set_cookie(&r, "mysocket_session").as_deref(), Some("mysocket_session="));

    // The provider restarts with a new signing key: the edge fetches the new keys.
    let port = provider.issuer.rsplit(':').next().unwrap().parse().unwrap();
    drop(provider);
    let _provider = OidcProvider::start(port).await;
    let again = sign_in(&ip(3), &host, "alice@example.com").await;
    assert_eq!(visit(&ip(1), &host, Some(&again), None).await.0, 200);

    // No node wrote a credential of the flow to its log, at trace level: the client secret, an
    // authorization code, a login or session cookie.
    let value = |cookie: &str| cookie.split_once('=').unwrap().1.to_string();
    let secrets = [
        ("the client secret", "test-client-secret".to_string()),
        ("a code", code),
        ("a login cookie", value(&login)),
        ("alice's session", value(&alice)),
        ("bob's session", value(&bob)),
        ("a later session", value(&again)),
    ];
    for n in [1, 2, 3] {
        let log = c.log(n);
        assert!(log.contains("cloud authentication"), "node {n} logged nothing of the sign-ins");
        for (what, secret) in &secrets {
            assert!(!log.contains(secret.as_str()), "node {n} logged {what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_authentication_session_expires() {
    let provider = OidcProvider::start(free_port()).await;
    let dir = tempfile::tempdir().unwrap();
    let builder = TestCluster::builder().nodes(1).arg("--oidc-session-secs").arg("3");
    let c = with_oidc_provider(builder, &provider, dir.path()).await;
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "ada").await;
    let team = SocketCreate {
        name: "team".into(),
        cloud_authentication_enabled: true,
        cloud_authentication_email_allowed_domains: vec!["example.com".into()],
        ..Default::default()
    };
    let web = api.connect(&team).await.unwrap();
    let _ssh = ssh_forward(&key, &u.user_name, &c.nodes[&1].ip, web.tunnels[0].local_port, origin().await);
    let ip = c.nodes[&1].ip.clone();
    let alice = sign_in(&ip, &web.dnsname, "alice@example.com").await;
    eventually(Duration::from_secs(20), "the tunnel up", || {
        let (ip, host, alice) = (ip.clone(), web.dnsname.clone(), alice.clone());
        async move { (visit(&ip, &host, Some(&alice), None).await.0 == 200).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(visit(&ip, &web.dnsname, Some(&alice), None).await.0, 302, "an expired session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_authentication_needs_an_identity_provider() {
    let c = TestCluster::builder().nodes(1).start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_, _, api) = ssh_user(&c, dir.path(), 1, "ada").await;
    let err = api
        .create_socket(&SocketCreate {
            name: "team".into(),
            cloud_authentication_enabled: true,
            cloud_authentication_email_allowed_domains: vec!["example.com".into()],
            ..Default::default()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("422") && err.contains("no identity provider"), "{err}");
    assert!(api.sockets().await.unwrap().is_empty());
}
