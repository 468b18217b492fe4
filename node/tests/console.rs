//! The web console (`/console`) against a real three-node cluster: its session cookie and its
//! defences over plain HTTP, and a newcomer's whole path in headless Chromium
//! (`tests/py/console_browser.py`), with screenshots of each step.

use std::process::Command;

use mysocket_testkit::*;
use reqwest::StatusCode;
use serde_json::json;
use serde_json::Value;

const MARK: &str = "x-mysocket-console";

/// The cookie is a credential only on the console's own requests; signing out revokes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_works_only_for_the_consoles_own_requests() {
    let c = TestCluster::builder().start().await;
    let api = c.nodes[&1].api_url();
    let http = reqwest::Client::new();
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEKB/+HUsFGo5IjxjdpUNkfai/lOgRCdHyy1c7BmPvcN test";
    let user = json!({"name": "Lin", "email": "lin@example.com", "password": "lin-password-1", "sshkey": key});
    assert_eq!(http.post(format!("{api}/user")).json(&user).send().await.unwrap().status(), StatusCode::OK);
    let login = json!({"email": "lin@example.com", "password": "lin-password-1"});

    // The page: its own script and style only, no frames.
    let page = http.get(format!("{api}/console")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    for part in ["default-src 'none'", "script-src 'self'", "frame-ancestors 'none'", "form-action 'self'"] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!page.text().await.unwrap().contains("<script>"), "no inline script");

    // Signing in needs the console's header (a form elsewhere cannot sign a browser in).
    let r = http.post(format!("{api}/console/session")).json(&login).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get("set-cookie").is_none());
    let r = http
        .post(format!("{api}/console/session"))
        .header(MARK, "1")
        .header("origin", "http://evil.example")
        .json(&login)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "from another origin");
    let wrong = json!({"email": "lin@example.com", "password": "not-it"});
    let r = http.post(format!("{api}/console/session")).header(MARK, "1").json(&wrong).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http.post(format!("{api}/console/session")).header(MARK, "1").json(&login).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(part), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    assert!(!set.contains("lin-password"), "{set}");

    // With the header, from its own origin, on every node: the account.
    for id in [1u64, 2, 3] {
        let base = c.nodes[&id].api_url();
        let host = base.trim_start_matches("http://").to_string();
        let me = http
            .get(format!("{base}/user/me"))
            .header("cookie", &cookie)
            .header(MARK, "1")
            .header("origin", format!("http://{host}"))
            .header("sec-fetch-site", "same-origin")
            .send()
            .await
            .unwrap();
        assert_eq!(me.status(), StatusCode::OK, "node {id}");
        assert_eq!(me.json::<Value>().await.unwrap()["email"], "lin@example.com");
    }
    // Without it, or from elsewhere: nobody. Nothing is created.
    let attempts = [
        vec![],
        vec![("origin", "http://evil.example".to_string())],
        vec![("sec-fetch-site", "cross-site".to_string())],
    ];
    for (i, extra) in attempts.iter().enumerate() {
        let mut r = http.post(format!("{api}/socket")).header("cookie", &cookie).json(&json!({"name": "forged"}));
        if i > 0 {
            r = r.header(MARK, "1");
        }
        for (k, v) in extra {
            r = r.header(*k, v);
        }
        assert_eq!(r.send().await.unwrap().status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let own = |r: reqwest::RequestBuilder| r.header("cookie", &cookie).header(MARK, "1");
    let list: Value = own(http.get(format!("{api}/socket"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(list, json!([]), "no forged socket");

    // The recent-requests view of another account's socket answers like a missing one.
    let other = c.api(2);
    let other = {
        let u = mysocket_api::UserCreate {
            name: "Oz".into(),
            email: "oz@example.com".into(),
            password: "oz-password-1".into(),
            sshkey: key.into(),
        };
        other.create_user(&u).await.unwrap();
        let t = other.login("oz@example.com", "oz-password-1").await.unwrap().token;
        other.with_token(t)
    };
    let theirs =
        other.create_socket(&mysocket_api::SocketCreate { name: "theirs".into(), ..Default::default() }).await.unwrap();
    let r = own(http.get(format!("{api}/socket/{}/log", theirs.socket_id))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = own(http.get(format!("{api}/socket/not-an-id/log"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Signing out revokes the session's token on every node and clears the cookie.
    let r = own(http.delete(format!("{api}/console/session"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    for id in [1u64, 2, 3] {
        let r = own(http.get(format!("{}/user/me", c.nodes[&id].api_url()))).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "node {id} after sign-out");
    }
}

/// A newcomer in a real browser: sign up, create a socket, start its tunnel with the console's
/// own `ssh -R` command, see a request made through another node in the live view; another
/// account sees none of it; a page of another origin cannot use the session; the socket is
/// deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_does_the_try_it_steps_in_the_console_in_a_browser() {
    let c = TestCluster::builder().start().await;
    let console = format!("{}/console", c.nodes[&1].api_url());
    let public = format!("http://{}:8080", c.nodes[&2].ip);
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-shots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/console_browser.py");
    let said = browser_script(script, vec![console, public, shots.display().to_string()]).await;
    let v: Value = serde_json::from_str(&said).unwrap();
    assert_eq!(v["cookie_visible_to_scripts"], false, "{v}");
    assert_eq!(v["form_open_when_empty"], true, "{v}");
    assert_eq!(v["urls"][0], "http://console-demo.localhost:8080/", "{v}");
    assert!(v["ssh_command"].as_str().unwrap().starts_with("ssh -N -R "), "{v}");
    assert!(v["held_by"].as_str().unwrap().starts_with("node "), "{v}");
    assert_eq!(v["visitor_answer"], "the console's service saw GET /from-the-console-test", "{v}");
    assert!(v["log_line"].as_str().unwrap().contains(" GET /from-the-console-test 200 "), "{v}");
    assert!(v["markup_line"].as_str().unwrap().contains("<img/src=x/onerror="), "shown as text: {v}");
    assert_eq!((v["injected_elements"].as_u64(), v["title"].as_str()), (Some(0), Some("mysocket console")), "{v}");
    assert_eq!(v["phone_overflow_px"], 0, "the page fits a phone's width: {v}");
    assert!(v["foreign_fetch"].as_str().unwrap().starts_with("fetch refused"), "{v}");
    assert_eq!(v["sockets_after_foreign_page"], json!(["console-demo"]), "nothing made from elsewhere: {v}");
    assert_eq!(v["other_account_sockets"], 0, "{v}");
    assert_eq!(v["other_account_empty_shown"], true, "{v}");
    assert_eq!(v["other_account_log_status"], 404, "{v}");
    assert_eq!(v["message_after_delete"], "Socket console-demo deleted.", "{v}");
    for shot in ["1-sign-in", "2-socket-created", "3-live-requests", "4-phone", "5-other-account", "6-deleted"] {
        assert!(shots.join(format!("{shot}.png")).metadata().unwrap().len() > 1000, "{shot}");
    }
    eprintln!("console screenshots: {}", shots.display());

    // What the browser did, as the API sees it: the socket gone, nothing made by the foreign
    // page.
    let api = c.api(3);
    let t = api.login("grace@example.com", "console-password-1").await.unwrap().token;
    assert!(api.with_token(t).sockets().await.unwrap().is_empty());
}

/// The operators' dashboard draws the cluster's last hour, and its charts move while a load
/// runs (headless Chromium, the operator credential as Basic auth).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_charts_move_under_load_in_a_browser() {
    let c = TestCluster::builder().start().await;
    let dashboard = format!("{}/operator", c.nodes[&1].api_url());
    let publics = [1u64, 2].map(|id| format!("http://{}:8080", c.nodes[&id].ip)).join(",");
    // The load: a socket whose tunnel plain OpenSSH holds on node 1, asked through nodes 1 and 2.
    let home = tempfile::tempdir().unwrap();
    let (key, public) = ssh_keygen(home.path(), "id_ed25519");
    let api = c.api(1);
    let user = mysocket_api::UserCreate {
        name: "Load".into(),
        email: "load@example.com".into(),
        password: "load-password-1".into(),
        sshkey: public,
    };
    let u = api.create_user(&user).await.unwrap();
    let token = api.login("load@example.com", "load-password-1").await.unwrap().token;
    let api = api.with_token(token);
    let sock = api.connect(&mysocket_api::SocketCreate { name: "load".into(), ..Default::default() }).await.unwrap();
    let forward = format!("{}:127.0.0.1:{}", sock.tunnels[0].local_port, origin().await);
    let ssh = Command::new("ssh")
        .args(["-N", "-R", &forward, "-l", &u.user_name, "-p", "2222", "-i", key.to_str().unwrap()])
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
        .arg(&c.nodes[&1].ip)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _ssh = Killed(ssh);
    let host = sock.dnsname.clone();
    eventually(std::time::Duration::from_secs(20), "the load's tunnel", || {
        let (ip, host) = (c.nodes[&2].ip.clone(), host.clone());
        async move {
            let r = reqwest::Client::new().get(format!("http://{ip}:8080/")).header("host", host).send().await.ok()?;
            (r.status() == StatusCode::OK).then_some(())
        }
    })
    .await;
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-shots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/dashboard_browser.py");
    let args = vec![dashboard, c.operator_token.clone(), publics, sock.dnsname.clone(), shots.display().to_string()];
    let v: Value = serde_json::from_str(&browser_script(script, args).await).unwrap();
    assert_eq!(v["charts"], json!(["requests", "bytes", "connections", "tunnels", "applied"]), "{v}");
    for node in ["node 1", "node 2", "node 3"] {
        assert!(v["before"][node].is_array(), "a line per node: {v}");
    }
    // The nodes that took the load show it; the one that did not stays at zero.
    for node in ["node 1", "node 2"] {
        assert!(v["during"][node][0].as_f64().unwrap() > 5.0, "{node} under load: {v}");
    }
    assert_eq!(v["during"]["node 3"][0].as_f64().unwrap(), 0.0, "{v}");
    assert!(v["during"]["node 1"][1].as_u64() > v["before"]["node 1"][1].as_u64(), "new points: {v}");
    assert!(v["bytes"]["node 1"][0].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["tunnels"]["node 1"][0].as_f64().unwrap(), 1.0, "{v}");
    assert_eq!(v["phone_overflow_px"], 0, "the page fits a phone's width: {v}");
    for shot in ["1-before", "2-under-load", "3-phone"] {
        assert!(shots.join(format!("{shot}.png")).metadata().unwrap().len() > 1000, "{shot}");
    }
    eprintln!("dashboard screenshots: {}", shots.display());

    // Without the operator credential: the health in aggregate, no charts of the nodes.
    let page = reqwest::get(format!("{}/", c.nodes[&2].api_url())).await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'none'") && !csp.contains("script-src"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("id=health") && !html.contains("<svg") && !html.contains("node 1"), "{html}");
}

/// A child process killed when the test ends, passed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// With an identity provider, an account signs in to the console with it (the provider's
/// verified email names the account); a verified stranger without an account is told so and
/// gets no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_signs_in_to_the_console_with_the_identity_provider() {
    let provider = OidcProvider::start(free_port()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = with_oidc_provider(TestCluster::builder(), &provider, dir.path()).await;
    let view: Value = reqwest::get(format!("{}/cluster", c.nodes[&2].api_url())).await.unwrap().json().await.unwrap();
    assert_eq!(view["identity_provider"], true);
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEKB/+HUsFGo5IjxjdpUNkfai/lOgRCdHyy1c7BmPvcN test";
    let alice = mysocket_api::UserCreate {
        name: "Alice".into(),
        email: "alice@example.com".into(),
        password: "alice-password-1".into(),
        sshkey: key.into(),
    };
    c.api(1).create_user(&alice).await.unwrap();

    // A callback that did not start here, or whose state is not the login's, signs nobody in.
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let api = c.nodes[&1].api_url();
    let r = http.get(format!("{api}/console/oidc/callback?state=x&code=y")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(!r.headers().get_all("set-cookie").iter().any(|v| v.to_str().unwrap().starts_with("mysocket_session=")));
    let start = http.get(format!("{api}/console/oidc")).send().await.unwrap();
    assert_eq!(start.status(), StatusCode::FOUND);
    let to = start.headers()["location"].to_str().unwrap().to_string();
    assert!(to.starts_with(&provider.issuer) && to.contains("code_challenge_method=S256"), "{to}");
    let pending = start.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let r = http
        .get(format!("{api}/console/oidc/callback?state=not-the-one&code=y"))
        .header("cookie", &pending)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-oidc-shots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/console_oidc_browser.py");
    let said = browser_script(script, vec![format!("{api}/console"), shots.display().to_string()]).await;
    let v: Value = serde_json::from_str(&said).unwrap();
    assert_eq!(v["signed_in_as"], "alice@example.com", "{v}");
    assert_eq!(v["back_at"], "/console", "{v}");
    assert_eq!(v["cookie_visible_to_scripts"], false, "{v}");
    assert!(v["stranger"].as_str().unwrap().contains("No account has the email bob@other.org"), "{v}");
    assert_eq!(v["stranger_signed_in"], "no", "{v}");
    // The provider's sign-in made a token of Alice's like any other, which her signing out
    // revoked: only the login just made is left.
    let token = c.api(3).login("alice@example.com", "alice-password-1").await.unwrap().token;
    let listed: Value = reqwest::Client::new()
        .get(format!("{}/credentials", c.nodes[&3].api_url()))
        .header("x-access-token", token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["login"], "{listed}");
}
