//! `mysocketctl` as a user runs it: the real binary against a real three-node cluster.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use mysocket_testkit::*;
use serde_json::Value;

struct Ctl {
    urls: String,
    token_file: std::path::PathBuf,
    home: tempfile::TempDir,
}

impl Ctl {
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_at(&self.urls, args)
    }

    /// `run` with another API URL (list).
    fn run_at(&self, urls: &str, args: &[&str]) -> (i32, String, String) {
        self.run_with(urls, &[], args)
    }

    /// `run` with another API URL (list) and more environment.
    fn run_with(&self, urls: &str, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_mysocketctl"))
            .args(args)
            .envs(env.iter().copied())
            .env("XDG_RUNTIME_DIR", self.home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env("MYSOCKET_API", urls)
            .env("MYSOCKET_TOKEN_FILE", &self.token_file)
            .env("HOME", self.home.path())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "mysocketctl {args:?} failed: {err}");
        out
    }

    /// A new user `name` with a fresh key in `~/.ssh/id_ed25519` (the key `account create`
    /// and `connect` take by default), account created and logged in through `urls`.
    fn logged_in(urls: String, name: &str) -> Ctl {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
        ssh_keygen(&home.path().join(".ssh"), "id_ed25519");
        let ctl = Ctl { urls, token_file: home.path().join("token"), home };
        let (email, password) = (format!("{name}@example.com"), format!("{name}-password"));
        ctl.ok(&["account", "create", "--name", name, "--email", &email, "--password", &password]);
        ctl.ok(&["login", "--email", &email, "--password", &password]);
        ctl
    }

    /// Starts `mysocketctl connect --port <port> --name <name> --temporary` (the original
    /// client's connect: a new socket, deleted on exit) against `api`; returns it once its
    /// socket exists, with the socket's DNS name.
    async fn connect(
        &self,
        api: &str,
        port: u16,
        name: &str,
        stdout: std::process::Stdio,
        stderr: std::process::Stdio,
    ) -> (std::process::Child, String) {
        self.connect_with(api, port, name, &["--temporary"], stdout, stderr).await
    }

    /// `connect --port <port> --name <name>` and `extra`, once its socket exists.
    async fn connect_with(
        &self,
        api: &str,
        port: u16,
        name: &str,
        extra: &[&str],
        stdout: std::process::Stdio,
        stderr: std::process::Stdio,
    ) -> (std::process::Child, String) {
        let child = Command::new(env!("CARGO_BIN_EXE_mysocketctl"))
            .args(["connect", "--port", &port.to_string(), "--name", name])
            .args(extra)
            .env("MYSOCKET_API", api)
            .env("MYSOCKET_TOKEN_FILE", &self.token_file)
            .env("HOME", self.home.path())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        let dnsname = eventually(std::time::Duration::from_secs(20), "connect to create its socket", || {
            let v = self.json(&["socket", "ls"]);
            let mine = v.as_array().unwrap().iter().find(|s| s["name"] == name).map(|s| s["dnsname"].clone());
            async move { mine.and_then(|d| d.as_str().map(String::from)) }
        })
        .await;
        (child, dnsname)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_accounts_sockets_and_tunnels() {
    let mut c = TestCluster::builder().start().await;
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
    std::fs::write(home.path().join(".ssh/id_ed25519.pub"), format!("{SSH_KEY}\n")).unwrap();
    // The first URL is a node that is down: the CLI fails over to the next.
    c.kill9(1);
    let urls = [1u64, 2, 3].iter().map(|id| c.nodes[id].api_url()).collect::<Vec<_>>().join(",");
    let ctl = Ctl { urls, token_file: home.path().join("token"), home };

    // Not logged in: exit 3 and a hint.
    let (code, _, err) = ctl.run(&["socket", "ls"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("mysocketctl login"), "{err}");

    // account create takes the default public key when --sshkey is absent.
    let out =
        ctl.ok(&["account", "create", "--name", "Ada", "--email", "ada@example.com", "--password", "s3cret-pass"]);
    assert!(out.contains("Account created"), "{out}");
    // A taken email is answered like a free one (sign-up tells no stranger which emails have
    // accounts) and changes nothing; the operator is told it is taken.
    let again = ["account", "create", "--name", "Ada", "--email", "ada@example.com", "--password", "other-pass"];
    assert!(ctl.ok(&again).contains("nothing changed"));
    let token = c.dir.path().join("operator-token");
    let (code, _, err) = ctl.run(&[&["--operator-token-file", token.to_str().unwrap()][..], &again[..]].concat());
    assert_eq!(code, 5, "duplicate email: {err}");

    let (code, _, err) = ctl.run(&["login", "--email", "ada@example.com", "--password", "wrong-pass"]);
    assert_eq!(code, 3, "{err}");
    ctl.ok(&["login", "--email", "ada@example.com", "--password", "s3cret-pass"]);
    let mode = std::fs::metadata(&ctl.token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "token file mode");

    let me = ctl.json(&["account", "show"]);
    assert_eq!(me["email"], "ada@example.com");
    assert!(ctl.ok(&["account", "show"]).contains("ada@example.com"));

    let s = ctl.json(&["socket", "create", "--name", "web", "--type", "https"]);
    let sid = s["socket_id"].as_str().unwrap().to_string();
    let table = ctl.ok(&["socket", "ls"]);
    assert!(table.contains(&sid) && table.contains("https"), "{table}");
    let p = ctl.json(&[
        "socket",
        "create",
        "--name",
        "private",
        "--type",
        "http",
        "--protected",
        "--username",
        "u",
        "--password",
        "p",
    ]);
    assert_eq!(p["protected_socket"], true);
    // Half a protected socket is a usage error, and makes nothing: --protected without its
    // credentials, or credentials without --protected (which would leave the socket open).
    let before = ctl.json(&["socket", "ls"]).as_array().unwrap().len();
    for args in [&["--protected", "--username", "u"][..], &["--username", "u", "--password", "p"][..]] {
        let mut a = vec!["socket", "create", "--name", "half"];
        a.extend_from_slice(args);
        let (code, _, err) = ctl.run(&a);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("--password") || err.contains("--protected"), "{args:?}: {err}");
    }
    assert_eq!(ctl.json(&["socket", "ls"]).as_array().unwrap().len(), before);
    let (code, _, err) = ctl.run(&["socket", "create", "--name", "bad", "--type", "gopher"]);
    assert_eq!(code, 2, "bad type: {err}");
    assert!(err.contains("socket_type"), "{err}");

    // Underscore flags, as the original client spells them.
    let t = ctl.json(&["tunnel", "create", "--socket_id", &sid]);
    let tid = t["tunnel_id"].as_str().unwrap().to_string();
    assert!(ctl.ok(&["tunnel", "ls", "--socket_id", &sid]).contains(&tid));
    assert_eq!(ctl.json(&["socket", "show", "--socket_id", &sid])["tunnels"].as_array().unwrap().len(), 1);
    ctl.ok(&["tunnel", "delete", "--socket_id", &sid, "--tunnel_id", &tid]);
    let (code, _, _) = ctl.run(&["tunnel", "show", "--socket_id", &sid, "--tunnel_id", &tid]);
    assert_eq!(code, 4, "deleted tunnel is not found");
    ctl.ok(&["socket", "delete", "--socket_id", &sid]);
    let (code, _, _) = ctl.run(&["socket", "show", "--socket_id", &sid]);
    assert_eq!(code, 4);
    assert_eq!(ctl.json(&["socket", "ls"]).as_array().unwrap().len(), 1);

    // Anyone sees the nodes' API and SSH addresses; only an operator their internal ones.
    let v = ctl.json(&["cluster", "status"]);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3);
    assert!(v["nodes"].as_array().unwrap().iter().all(|n| n.get("raft_addr").is_none()), "{v}");
    let token = c.dir.path().join("operator-token");
    let operator = ["--operator-token-file", token.to_str().unwrap()];
    let v = ctl.json(&[&operator[..], &["cluster", "status"]].concat());
    // The table gives each node's addresses as clients dial them, and where the nodes meet.
    let table = ctl.ok(&[&operator[..], &["cluster", "status"]].concat());
    for n in v["nodes"].as_array().unwrap() {
        let row = table.lines().find(|l| l.contains(n["api_addr"].as_str().unwrap())).unwrap_or_default();
        assert!(
            row.contains(n["ssh_addr"].as_str().unwrap()) && row.contains(n["raft_addr"].as_str().unwrap()),
            "{table}"
        );
    }
    // Membership changes need the operator token: without it, a usage-free refusal (exit 3).
    let (code, _, err) = ctl.run(&["cluster", "remove", "--id", "2"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("operator token"), "{err}");

    // Rules the cluster cannot enforce are refused, with the server's reason, and nothing is made.
    let before = ctl.json(&["socket", "ls"]).as_array().unwrap().len();
    let (code, _, err) =
        ctl.run(&["socket", "create", "--name", "c", "--cloudauth", "--allowed_email_addresses", "a@x.org"]);
    assert_ne!(code, 0);
    assert!(err.contains("cloud authentication") && err.contains("no identity provider"), "{err}");
    let (code, _, err) =
        ctl.run(&["socket", "create", "--name", "t", "--type", "tcp", "--protected", "-u", "u", "-p", "secret1"]);
    assert_ne!(code, 0);
    assert!(err.contains("http and https sockets only"), "{err}");
    assert_eq!(ctl.json(&["socket", "ls"]).as_array().unwrap().len(), before, "nothing was created");

    // Address lists and a rate limit: set at creation, changed, cleared, and shown.
    let t = ctl.json(&["socket", "create", "--name", "t", "--type", "tcp", "--ip-allow", "10.0.0.0/8,2001:db8::1"]);
    assert_eq!(t["ip_allow"], serde_json::json!(["10.0.0.0/8", "2001:db8::1/128"]));
    let tid = t["socket_id"].as_str().unwrap();
    let u = ctl.json(&["socket", "update", "--socket_id", tid, "--ip-deny", "10.9.0.0/16", "--rate-limit", "5"]);
    assert_eq!(
        (u["ip_deny"].clone(), u["rate_limit"].clone()),
        (serde_json::json!(["10.9.0.0/16"]), serde_json::json!(5))
    );
    assert_eq!(u["ip_allow"], t["ip_allow"], "a rule not given stays");
    let shown = ctl.ok(&["socket", "show", "--socket_id", tid]);
    for want in ["ip allow:    10.0.0.0/8, 2001:db8::1/128", "ip deny:     10.9.0.0/16", "5 per second per visitor"] {
        assert!(shown.contains(want), "{want} in {shown}");
    }
    let cleared = ctl.json(&["socket", "update", "--socket_id", tid, "--ip-allow", ""]);
    assert_eq!(cleared["ip_allow"], serde_json::json!([]));
    let (code, _, err) = ctl.run(&["socket", "update", "--socket_id", tid, "--ip-deny", "10.0.0.0/33"]);
    assert_ne!(code, 0);
    assert!(err.contains("CIDR"), "{err}");

    // Every URL down: exit 1 with a clear message.
    let dead = Ctl {
        urls: "http://127.0.0.1:1".into(),
        token_file: ctl.token_file.clone(),
        home: tempfile::tempdir().unwrap(),
    };
    let (code, _, err) = dead.run(&["socket", "ls"]);
    assert_eq!(code, 1);
    assert!(err.contains("no node answered"), "{err}");
}

async fn http_get(node_ip: &str, host: &str) -> u16 {
    let request = reqwest::Client::new().get(format!("http://{node_ip}:8080/")).header("host", host);
    match request.timeout(std::time::Duration::from_secs(10)).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_publishes_a_local_port_survives_its_node_and_cleans_up() {
    let mut c = TestCluster::builder().start().await;
    let urls = [1u64, 2, 3].iter().map(|id| c.nodes[id].api_url()).collect::<Vec<_>>().join(",");
    let ctl = Ctl::logged_in(urls.clone(), "eve");
    let port = origin().await;

    let log = ctl.home.path().join("connect.log");
    // connect is pointed at node 1 alone, as a newcomer's default API URL would: the tunnel is
    // node 1's, and once node 1 is gone the other nodes (from GET /cluster) still answer it.
    let stdout = std::fs::File::create(&log).unwrap().into();
    let stderr = std::fs::File::create(ctl.home.path().join("connect.err")).unwrap().into();
    let (mut child, dnsname) = ctl.connect(&c.nodes[&1].api_url(), port, "demo", stdout, stderr).await;
    for id in [1u64, 2, 3] {
        let ip = c.nodes[&id].ip.clone();
        eventually(std::time::Duration::from_secs(20), &format!("the URL through node {id}"), || {
            let (ip, host) = (ip.clone(), dnsname.clone());
            async move { (http_get(&ip, &host).await == 200).then_some(()) }
        })
        .await;
    }
    // The session log shows every request, relayed ones too: time, client, method, path,
    // status, bytes and latency.
    eventually(std::time::Duration::from_secs(20), "a log line per request through each node", || {
        let out = std::fs::read_to_string(&log).unwrap_or_default();
        let lines = out.lines().filter(|l| l.contains(" GET / 200 ") && l.contains("B ") && l.ends_with("ms")).count();
        async move { (lines >= 3).then_some(()) }
    })
    .await;

    // kill -9 the node holding the tunnel: connect moves to another node and the URL answers again.
    let view = c.operator(1).cluster().await.unwrap();
    let holder = view.nodes.iter().find(|n| n.tunnels == Some(1)).expect("a node holds the tunnel").id;
    assert_eq!(holder, 1, "the tunnel is held by the node whose API created it");
    let t0 = std::time::Instant::now();
    c.kill9(holder);
    let other = c.running()[0];
    let ip = c.nodes[&other].ip.clone();
    eventually(std::time::Duration::from_secs(45), "the URL to answer after the holder died", || {
        let (ip, host) = (ip.clone(), dnsname.clone());
        async move { (http_get(&ip, &host).await == 200).then_some(()) }
    })
    .await;
    eprintln!("mysocketctl connect: URL answering again {:?} after kill -9 of node {holder}", t0.elapsed());

    // Ctrl-C: the socket is deleted (through a node connect learned of, its only API URL being
    // down), and connect says so.
    Command::new("kill").arg("-INT").arg(child.id().to_string()).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "connect exit {status:?}");
    let err = std::fs::read_to_string(ctl.home.path().join("connect.err")).unwrap();
    assert!(err.contains("deleted"), "{err}");
    assert!(ctl.json(&["socket", "ls"]).as_array().unwrap().is_empty());
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(out.contains("Welcome to mysocket"), "banner missing: {out}");
}

/// A visitor of a service that is down gets a 502 page saying so from whichever node takes
/// the request, on a connection that stays open for the next one, and `connect` (whose banner
/// shows its own socket, not the account's others) says it once per request: the channel is asked for once, not again by each node's other HTTP path or
/// after a refresh of the registry (the refusal is the client's own answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_is_down_gets_one_502_and_one_line_per_request() {
    let c = TestCluster::builder().start().await;
    let ctl = Ctl::logged_in(c.nodes[&1].api_url(), "lee");
    // Another socket of the account, which this tunnel does not serve: not in its banner.
    ctl.json(&["socket", "create", "--name", "elsewhere", "--type", "http"]);
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (out_file, err_file) = (ctl.home.path().join("connect.out"), ctl.home.path().join("connect.err"));
    let stdout = std::fs::File::create(&out_file).unwrap().into();
    let stderr = std::fs::File::create(&err_file).unwrap().into();
    let (mut child, dnsname) = ctl.connect(&ctl.urls, down, "down", stdout, stderr).await;
    let said = || std::fs::read_to_string(&err_file).unwrap().matches(" is down (").count();
    eventually(std::time::Duration::from_secs(20), "the tunnel up", || {
        let up = std::fs::read_to_string(&err_file).unwrap().contains("tunnel up via");
        async move { up.then_some(()) }
    })
    .await;
    // Node 1 holds the tunnel; nodes 2 and 3 relay. Three requests on one connection each: a
    // HEAD (its answer has no body, or the next answer would be misread), two GETs, the last
    // of which closes the connection, so the answers end where the connection does.
    let mut expected = 0;
    for id in [1u64, 2, 3] {
        let mut tcp = tokio::net::TcpStream::connect((c.nodes[&id].ip.as_str(), 8080)).await.unwrap();
        for (method, close) in [("HEAD", false), ("GET", false), ("GET", true)] {
            let request = format!(
                "{method} / HTTP/1.1\r\nHost: {dnsname}\r\n{}\r\n",
                if close { "Connection: close\r\n" } else { "" }
            );
            tokio::io::AsyncWriteExt::write_all(&mut tcp, request.as_bytes()).await.unwrap();
        }
        let read = async {
            let mut answers = read_http_answer(&mut tcp, "HEAD").await?.text();
            answers += &read_http_answer(&mut tcp, "GET").await?.text();
            answers += &read_last_http_answer(&mut tcp, "GET").await?.text();
            std::io::Result::Ok(answers)
        };
        let answers =
            tokio::time::timeout(std::time::Duration::from_secs(20), read).await.expect("the answers in time").unwrap();
        assert_eq!(answers.matches("HTTP/1.1 502 Bad Gateway\r\n").count(), 3, "through node {id}: {answers}");
        assert_eq!(
            answers.matches("the service behind it did not take the connection (is it running?)").count(),
            2,
            "through node {id}, the GETs' pages: {answers}"
        );
        assert!(answers.trim_end().ends_with("</html>"), "through node {id}: {answers}");
        expected += 3;
        // connect's line for each request, and for no request twice.
        eventually(std::time::Duration::from_secs(10), &format!("{expected} lines from connect"), || {
            let n = said();
            async move { (n >= expected).then_some(()) }
        })
        .await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let told = std::fs::read_to_string(&err_file).unwrap();
    assert_eq!(said(), expected, "{told}");
    let banner = std::fs::read_to_string(&out_file).unwrap();
    assert!(banner.contains(&format!("  down (http): http://{dnsname}:8080/")), "{banner}");
    assert!(!banner.contains("elsewhere"), "{banner}");
    assert!(told.contains(&format!("the local service at 127.0.0.1:{down} is down")), "{told}");
    let _ = child.kill();
    let _ = child.wait();
}

/// Deleting a socket while `connect` serves it (from another terminal, or through the API)
/// closes its tunnel on the node that held it, and `connect` stops and says why, instead of
/// reconnecting for ever to a tunnel that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_its_socket_closes_the_tunnel_and_stops_connect() {
    let c = TestCluster::builder().start().await;
    let ctl = Ctl::logged_in(c.nodes[&1].api_url(), "max");
    let err_file = ctl.home.path().join("connect.err");
    let stderr = std::fs::File::create(&err_file).unwrap().into();
    let (mut child, _) =
        ctl.connect(&ctl.urls, origin().await, "short-lived", std::process::Stdio::null(), stderr).await;
    let connected =
        || async { c.operator(1).cluster().await.unwrap().nodes.iter().filter_map(|n| n.tunnels).sum::<usize>() };
    eventually(std::time::Duration::from_secs(20), "the tunnel held", || async {
        (connected().await == 1).then_some(())
    })
    .await;
    let sid = ctl.json(&["socket", "ls"])[0]["socket_id"].as_str().unwrap().to_string();
    ctl.ok(&["socket", "delete", "--socket_id", &sid]);
    let status = eventually(std::time::Duration::from_secs(20), "connect to stop", || {
        let done = child.try_wait().unwrap();
        async move { done }
    })
    .await;
    assert_eq!(status.code(), Some(1), "connect's exit");
    let told = std::fs::read_to_string(&err_file).unwrap();
    assert!(told.contains("this tunnel was deleted") && told.contains("no longer exists"), "{told}");
    assert!(told.contains("was deleted already"), "{told}");
    assert_eq!(connected().await, 0, "no node holds the tunnel");
}

/// A newcomer's CLI knows one node (the default API URL); once it has logged in, every command
/// still reaches the cluster through the other nodes while that one is down — and only for
/// that URL: a command given another one gets no fall-back onto this cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_fall_back_on_the_nodes_seen_at_login_when_their_node_is_down() {
    let mut c = TestCluster::builder().start().await;
    let node1 = c.nodes[&1].api_url();
    let ctl = Ctl::logged_in(node1.clone(), "kay");
    ctl.json(&["socket", "create", "--name", "before", "--type", "http"]);
    c.kill9(1);
    // A read and a write through node 1's URL, node 1 being gone.
    ctl.json(&["socket", "create", "--name", "after", "--type", "tcp"]);
    let mut names: Vec<String> = ctl
        .json(&["socket", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["after", "before"]);
    // Another URL, which nothing serves: the remembered nodes are not tried.
    let elsewhere = format!("http://{}:9", c.nodes[&1].ip);
    let (code, _, err) = ctl.run_at(&elsewhere, &["socket", "ls"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no node answered") && err.contains(":9"), "{err}");
}

/// `connect` prints the session log without ever holding up the tunnel: with its output a
/// pipe nobody reads (64 KiB), requests go on being answered through the tunnel, and once
/// the output is read again a line says how many log lines were dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_keeps_serving_while_its_output_is_not_read() {
    let c = TestCluster::builder().nodes(1).start().await;
    let ctl = Ctl::logged_in(c.nodes[&1].api_url(), "pat");
    let (stdout, stderr) = (std::process::Stdio::piped(), std::process::Stdio::null());
    let (mut child, dnsname) = ctl.connect(&ctl.urls, origin().await, "paused", stdout, stderr).await;
    let ip = c.nodes[&1].ip.clone();
    eventually(std::time::Duration::from_secs(20), "the URL", || {
        let (ip, host) = (ip.clone(), dnsname.clone());
        async move { (http_get(&ip, &host).await == 200).then_some(()) }
    })
    .await;
    // Lines of about 300 bytes; the pipe takes some 200 of them. The node sends the log as a
    // message per 10 ms of traffic at most, and connect queues 256 messages: ten seconds of
    // requests overflow both however fast the requests go (15,000 of them alone did not, on
    // a fast machine).
    let path = format!("/{}", "p".repeat(255));
    let (started, mut sent) = (std::time::Instant::now(), 0);
    while sent < 15_000 || started.elapsed() < std::time::Duration::from_secs(10) {
        all_answered(&ip, &dnsname, &path, 1_000, 200, "connect's output unread").await;
        sent += 1_000;
    }

    let seen = read_in_background(child.stdout.take().unwrap());
    // The note goes out with the next log message connect takes.
    let dropped =
        eventually(std::time::Duration::from_secs(20), "a line saying how many log lines were dropped", || {
            let (ip, host, seen) = (ip.clone(), dnsname.clone(), seen.clone());
            async move {
                http_get(&ip, &host).await;
                dropped_count(&seen, " log lines dropped: the terminal did not keep up)")
            }
        })
        .await;
    eprintln!(
        "connect's output unread: {sent} requests answered in {:?}, {dropped} log lines dropped",
        started.elapsed()
    );
    assert!((1..sent).contains(&dropped), "{dropped} of {sent} lines dropped");
    let _ = child.kill();
    let _ = child.wait();

    // The same for its own messages (stderr): a line per visitor while the service is down.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (stdout, stderr) = (std::process::Stdio::null(), std::process::Stdio::piped());
    let (mut child, dnsname) = ctl.connect(&ctl.urls, down, "down", stdout, stderr).await;
    eventually(std::time::Duration::from_secs(20), "the 502 of a service that is down", || {
        let (ip, host) = (ip.clone(), dnsname.clone());
        async move { (http_get(&ip, &host).await == 502).then_some(()) }
    })
    .await;
    all_answered(&ip, &dnsname, "/", 3_000, 502, "connect's messages unread").await;
    let seen = read_in_background(child.stderr.take().unwrap());
    eventually(std::time::Duration::from_secs(20), "a line saying how many messages were dropped", || {
        let (ip, host, seen) = (ip.clone(), dnsname.clone(), seen.clone());
        async move {
            http_get(&ip, &host).await;
            String::from_utf8_lossy(&seen.lock().unwrap())
                .contains(" messages dropped: the terminal did not keep up)")
                .then_some(())
        }
    })
    .await;
    let told = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert!(told.contains(&format!("the local service at 127.0.0.1:{down} is down")), "{told}");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysocketctl_speaks_https_to_an_api_signed_by_the_cluster_ca() {
    let c = TestCluster::builder().nodes(1).arg("--api-tls").start().await;
    let ip = c.nodes[&1].ip.clone();
    let url = format!("https://{ip}:7070");
    let ca = c.data_dir(1).join("ca.pem");
    assert!(std::fs::read_to_string(&ca).unwrap().contains("BEGIN CERTIFICATE"), "the node wrote the cluster CA");
    // Plain HTTP on the API port gets nothing.
    assert!(reqwest::get(format!("http://{ip}:7070/healthz")).await.is_err(), "the API answered plain HTTP");

    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
    ssh_keygen(&home.path().join(".ssh"), "id_ed25519");
    let ctl = Ctl { urls: url.clone(), token_file: home.path().join("token"), home };
    let create = ["account", "create", "--name", "Tess", "--email", "tess@example.com", "--password", "tess-pass"];
    // Without the CA the certificate is refused, and nothing is sent.
    let (code, _, err) = ctl.run(&create);
    assert_eq!(code, 1, "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let cacert = ["--cacert", ca.to_str().unwrap()];
    ctl.ok(&[&cacert[..], &create[..]].concat());
    ctl.ok(&[&cacert[..], &["login", "--email", "tess@example.com", "--password", "tess-pass"]].concat());
    // Login kept the CA: later commands to the same URL trust it without --cacert, and connect
    // takes the SSH host key it pins from GET /cluster over the verified channel.
    assert!(ctl.json(&["socket", "ls"]).as_array().unwrap().is_empty());
    let origin = origin().await;
    let (mut child, dnsname) =
        ctl.connect(&url, origin, "secure", std::process::Stdio::null(), std::process::Stdio::null()).await;
    eventually(std::time::Duration::from_secs(20), "the socket to answer", || {
        let (ip, dnsname) = (ip.clone(), dnsname.clone());
        async move { (http_get(&ip, &dnsname).await == 200).then_some(()) }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    // Another CA than the cluster's: refused.
    let other = c.dir.path().join("other-ca.pem");
    std::fs::write(&other, test_pki(std::slice::from_ref(&ip)).0).unwrap();
    let (code, _, err) = ctl.run(&["--cacert", other.to_str().unwrap(), "socket", "ls"]);
    assert_eq!(code, 1, "{err}");
}

/// `connect --name` keeps the account's socket: the same URL on every run, a chosen subdomain
/// nobody else can take, and a chosen tcp port honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_a_name_keeps_its_url_across_runs() {
    let c = TestCluster::builder().start().await;
    let urls = [1u64, 2, 3].iter().map(|id| c.nodes[id].api_url()).collect::<Vec<_>>().join(",");
    let ctl = Ctl::logged_in(urls.clone(), "kim");
    let port = origin().await;
    let (ctl, c) = (&ctl, &c);
    let run = |n: usize| async move {
        let stderr = std::fs::File::create(ctl.home.path().join(format!("connect-{n}.err"))).unwrap().into();
        let extra = ["--subdomain", "demo"];
        let (child, dnsname) =
            ctl.connect_with(&ctl.urls, port, "demo", &extra, std::process::Stdio::null(), stderr).await;
        assert_eq!(dnsname, "demo.localhost", "run {n}");
        let ip = c.nodes[&2].ip.clone();
        eventually(std::time::Duration::from_secs(20), "the chosen name through node 2", || {
            let ip = ip.clone();
            async move { (http_get(&ip, "demo.localhost").await == 200).then_some(()) }
        })
        .await;
        child
    };
    let mut first = run(1).await;
    let before = ctl.json(&["socket", "ls"]);
    let sid = before[0]["socket_id"].as_str().unwrap().to_string();
    Command::new("kill").arg("-INT").arg(first.id().to_string()).status().unwrap();
    assert!(first.wait().unwrap().success());
    let told = std::fs::read_to_string(ctl.home.path().join("connect-1.err")).unwrap();
    assert!(told.contains("kept for the next run"), "{told}");
    let after = ctl.json(&["socket", "ls"]);
    assert_eq!(after.as_array().unwrap().len(), 1, "the socket stays: {after}");

    // The second run reuses the socket and its tunnel: the same id, the same URL.
    let mut second = run(2).await;
    let again = ctl.json(&["socket", "ls"]);
    assert_eq!(again.as_array().unwrap().len(), 1, "{again}");
    assert_eq!(again[0]["socket_id"].as_str().unwrap(), sid);
    assert_eq!(again[0]["tunnels"].as_array().unwrap().len(), 1, "the idle tunnel reused: {again}");
    Command::new("kill").arg("-INT").arg(second.id().to_string()).status().unwrap();
    assert!(second.wait().unwrap().success());

    // Another account cannot take the name.
    let other = Ctl::logged_in(urls, "lou");
    let (code, _, err) = other.run(&["connect", "--port", &port.to_string(), "--subdomain", "demo"]);
    assert_ne!(code, 0);
    assert!(err.contains("demo.localhost is taken"), "{err}");
    // A reused socket of another type is refused with what to do.
    let (code, _, err) = ctl.run(&["connect", "--port", &port.to_string(), "--name", "demo", "--type", "tcp"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is a http socket, not tcp") && err.contains("socket delete"), "{err}");

    // A chosen public port for a tcp socket.
    let db = ctl.json(&["socket", "create", "--name", "db", "--type", "tcp", "--public-port", "20777"]);
    assert_eq!(db["socket_tcp_ports"], serde_json::json!([20777]), "{db}");
    let (code, _, err) = other.run(&["socket", "create", "--name", "db", "--type", "tls", "--public-port", "20777"]);
    assert_ne!(code, 0);
    assert!(err.contains("port 20777 is taken"), "{err}");
}

/// `apikey create` shows a key once; with MYSOCKET_API_KEY (and no login) every command works
/// as the account; `apikey ls` never shows a secret; `apikey revoke` stops it on every node;
/// `token ls`/`token revoke`, and an operator's `--account`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_drives_the_cli_until_it_is_revoked() {
    let c = TestCluster::builder().start().await;
    let ctl = Ctl::logged_in(c.nodes[&1].api_url(), "keyed");
    let made = ctl.json(&["apikey", "create", "--name", "ci", "--expires-in-days", "7"]);
    let key = made["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("mysk_") && made["expires_at"].is_string(), "{made}");
    let shown = ctl.ok(&["apikey", "create", "--name", "deploy"]);
    assert!(shown.contains("shown this once") && shown.contains("mysk_"), "{shown}");

    // The key alone (no token file), through another node.
    std::fs::remove_file(&ctl.token_file).unwrap();
    let node2 = c.nodes[&2].api_url();
    let env = [("MYSOCKET_API_KEY", key.as_str())];
    let (code, out, err) = ctl.run_with(&node2, &env, &["socket", "create", "--name", "by-key", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("by-key"), "{out}");
    let (code, out, err) = ctl.run_with(&node2, &env, &["account", "show"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("keyed@example.com"), "{out}");
    let (code, listed, err) = ctl.run_with(&node2, &env, &["apikey", "ls"]);
    assert_eq!(code, 0, "{err}");
    assert!(listed.contains("ci") && listed.contains("deploy") && !listed.contains(&key[38..]), "{listed}");

    // Revoked: refused on every node (exit 3, not logged in).
    let id = made["id"].as_str().unwrap();
    let (code, out, err) = ctl.run_with(&node2, &env, &["apikey", "revoke", "--id", id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked"), "{out}");
    for n in 1..=3u64 {
        let (code, _, err) = ctl.run_with(&c.nodes[&n].api_url(), &env, &["socket", "ls"]);
        assert_eq!(code, 3, "node {n} still takes a revoked key: {err}");
    }

    // Tokens: a fresh login is listed, and the operator sees and revokes it.
    ctl.ok(&["login", "--email", "keyed@example.com", "--password", "keyed-password"]);
    let tokens = ctl.json(&["token", "ls"]);
    let mine = tokens.as_array().unwrap().iter().find(|t| t["current"] == true).expect("this token is marked").clone();
    let op_file = ctl.home.path().join("operator-token");
    std::fs::write(&op_file, &c.operator_token).unwrap();
    let op = op_file.to_str().unwrap();
    let seen = ctl.json(&["token", "ls", "--account", "keyed@example.com", "--operator-token-file", op]);
    assert!(seen.as_array().unwrap().iter().any(|t| t["id"] == mine["id"]), "{seen}");
    let (code, _, err) = ctl.run(&["token", "ls", "--account", "keyed@example.com"]);
    assert_eq!(code, 3, "--account without the operator credential: {err}");
    ctl.ok(&[
        "token",
        "revoke",
        "--id",
        mine["id"].as_str().unwrap(),
        "--account",
        "keyed@example.com",
        "--operator-token-file",
        op,
    ]);
    let (code, _, err) = ctl.run(&["socket", "ls"]);
    assert_eq!(code, 3, "a revoked login token still works: {err}");
}

/// A local service that answers every request with `I am <name>`.
async fn named_service(name: &'static str) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut buf = Vec::new();
                while next_head(&mut s, &mut buf).await.is_some() {
                    let body = format!("I am {name}");
                    let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

async fn fetch(node_ip: &str, host: &str) -> (u16, String) {
    let request = reqwest::Client::new().get(format!("http://{node_ip}:8080/")).header("host", host);
    match request.timeout(std::time::Duration::from_secs(10)).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// Waits until `name`.localhost answers `I am <service>` through every node.
async fn served_everywhere(c: &TestCluster, name: &str, service: &str) {
    for id in [1u64, 2, 3] {
        let ip = c.nodes[&id].ip.clone();
        let host = format!("{name}.localhost");
        let want = format!("I am {service}");
        eventually(std::time::Duration::from_secs(20), &format!("{host} through node {id}"), || {
            let (ip, host, want) = (ip.clone(), host.clone(), want.clone());
            async move { (fetch(&ip, &host).await == (200, want)).then_some(()) }
        })
        .await;
    }
}

/// The epoch of the session holding the tunnel of socket `name` (it changes when the tunnel
/// is claimed again, i.e. dropped and reconnected).
fn epoch_of(ctl: &Ctl, name: &str) -> Option<u64> {
    let socks = ctl.json(&["socket", "ls"]);
    let s = socks.as_array().unwrap().iter().find(|s| s["name"] == name)?.clone();
    s["tunnels"].as_array()?.iter().find_map(|t| t["session"]["epoch"].as_u64())
}

/// `start` runs a config file's two tunnels in one process, answering through all three nodes;
/// `reload` adds a third and removes one without dropping the one that stays (its session's
/// epoch is unchanged); a bad file is refused with its line by `config check`, `reload` and
/// SIGHUP alike, and the running tunnels are not touched; SIGTERM stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_runs_a_config_file_and_reload_changes_only_what_changed() {
    let c = TestCluster::builder().start().await;
    let ctl = Ctl::logged_in(c.nodes[&1].api_url(), "starter");
    let (a, b, g) = (named_service("alpha").await, named_service("beta").await, named_service("gamma").await);
    // The default path, which deploy/mysocketctl.service names too.
    std::fs::create_dir_all(ctl.home.path().join(".config/mysocket")).unwrap();
    let file = ctl.home.path().join(".config/mysocket/mysocket.toml");
    let tunnel =
        |name: &str, port: u16| format!("[[tunnel]]\nname = \"{name}\"\nlocal = {port}\nsubdomain = \"{name}\"\n\n");
    std::fs::write(&file, format!("inspect = false\n\n{}{}", tunnel("alpha", a), tunnel("beta", b))).unwrap();
    let cfg = file.to_str().unwrap();
    let out = ctl.ok(&["config", "check", "--config", cfg]);
    assert!(out.contains("ok, 2 tunnel(s)"), "{out}");

    // Started as the systemd unit starts it.
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/mysocketctl.service")).unwrap();
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("the unit's ExecStart");
    let home = ctl.home.path().to_str().unwrap();
    let mut argv = exec.split_whitespace().map(|a| a.replace("%h", home));
    assert_eq!(argv.next().as_deref(), Some("/usr/local/bin/mysocketctl"));
    let mut child = Reaped(
        Command::new(env!("CARGO_BIN_EXE_mysocketctl"))
            .args(argv)
            .env("MYSOCKET_API", &ctl.urls)
            .env("MYSOCKET_TOKEN_FILE", &ctl.token_file)
            .env("HOME", ctl.home.path())
            .env("XDG_RUNTIME_DIR", ctl.home.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let said = read_in_background(child.0.stderr.take().unwrap());
    served_everywhere(&c, "alpha", "alpha").await;
    served_everywhere(&c, "beta", "beta").await;
    let text = || String::from_utf8_lossy(&said.lock().unwrap()).into_owned();
    assert_eq!(text().matches("tunnel up via").count(), 2, "one SSH session, two forwards: {}", text());
    let beta_epoch = epoch_of(&ctl, "beta").expect("beta is held");

    // Reload: alpha goes, gamma comes, beta stays as it is.
    std::fs::write(&file, format!("inspect = false\n\n{}{}", tunnel("beta", b), tunnel("gamma", g))).unwrap();
    // `reload` with no --config: the default path, the unit's.
    let out = ctl.ok(&["reload"]);
    assert!(out.contains("sent to mysocketctl start"), "{out}");
    served_everywhere(&c, "gamma", "gamma").await;
    for id in [1u64, 2, 3] {
        let ip = c.nodes[&id].ip.clone();
        eventually(std::time::Duration::from_secs(20), &format!("alpha to stop answering through node {id}"), || {
            let ip = ip.clone();
            async move { (fetch(&ip, "alpha.localhost").await.0 != 200).then_some(()) }
        })
        .await;
    }
    served_everywhere(&c, "beta", "beta").await;
    assert_eq!(epoch_of(&ctl, "beta"), Some(beta_epoch), "beta's tunnel was dropped and claimed again: {}", text());
    assert!(text().contains("alpha: no longer forwarded"), "{}", text());
    assert!(!text().contains("beta: no longer"), "{}", text());

    // A bad file: refused with its line, everywhere; the tunnels run on.
    std::fs::write(&file, format!("inspect = false\n\n[[tunnel]]\nname = \"beta\"\nlocal = {b}\nsubdomian = \"x\"\n"))
        .unwrap();
    for args in [&["config", "check", "--config", cfg][..], &["reload", "--config", cfg]] {
        let (code, _, err) = ctl.run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(&format!("{cfg}:6")) && err.contains("subdomian"), "{args:?}: {err}");
    }
    // The unit's ExecReload (kill -HUP $MAINPID).
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    let killed = Command::new("kill").args(["-HUP", &child.0.id().to_string()]).status().unwrap();
    assert!(killed.success());
    eventually(std::time::Duration::from_secs(10), "the refused reload to be said", || {
        let t = text();
        async move { t.contains("reload refused").then_some(()) }
    })
    .await;
    served_everywhere(&c, "gamma", "gamma").await;
    assert_eq!(epoch_of(&ctl, "beta"), Some(beta_epoch));

    // SIGTERM: stops, the sockets kept.
    Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}: {}", text());
    let names: Vec<String> = ctl
        .json(&["socket", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.contains(&"beta".to_string()) && names.contains(&"gamma".to_string()), "{names:?}");
    // No start runs now: reload says so.
    std::fs::write(&file, format!("inspect = false\n\n{}", tunnel("beta", b))).unwrap();
    let (code, _, err) = ctl.run(&["reload", "--config", cfg]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no `mysocketctl start` runs"), "{err}");
}

/// The subcommands `--help` of `path` lists (without `help`).
fn subcommands(path: &[String]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_mysocketctl")).args(path).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let Some(list) = text.split("Commands:\n").nth(1) else { return Vec::new() };
    list.lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .filter(|c| c != "help")
        .collect()
}

/// Every command, found by walking `--help`, shows an example in its `--help`; completion
/// scripts for bash, zsh and fish name the commands, and bash's parses.
#[test]
fn every_command_has_an_example_and_completions_cover_them() {
    let mut todo: Vec<Vec<String>> = subcommands(&[]).into_iter().map(|c| vec![c]).collect();
    let mut leaves = Vec::new();
    while let Some(path) = todo.pop() {
        let subs = subcommands(&path);
        if subs.is_empty() {
            leaves.push(path);
        } else {
            todo.extend(subs.into_iter().map(|s| [path.clone(), vec![s]].concat()));
        }
    }
    assert!(leaves.len() >= 25, "{leaves:?}");
    for path in &leaves {
        let out = Command::new(env!("CARGO_BIN_EXE_mysocketctl")).args(path).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        let example = help.lines().find(|l| l.starts_with("Example: ")).unwrap_or("");
        assert!(
            example.contains(&format!("mysocketctl {}", path.join(" "))),
            "`mysocketctl {} --help` shows no example of it:\n{help}",
            path.join(" ")
        );
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_mysocketctl")).args(["completion", shell]).output().unwrap();
        assert!(out.status.success());
        let script = String::from_utf8_lossy(&out.stdout);
        for cmd in ["connect", "start", "apikey", "reload"] {
            assert!(script.contains(cmd), "{shell} completion lacks {cmd}");
        }
        if shell == "bash" {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("c.bash");
            std::fs::write(&f, script.as_bytes()).unwrap();
            assert!(Command::new("bash").arg("-n").arg(&f).status().unwrap().success(), "bash cannot parse it");
        }
    }
    let (code, _) = {
        let out = Command::new(env!("CARGO_BIN_EXE_mysocketctl")).args(["completion", "tcsh"]).output().unwrap();
        (out.status.code(), out)
    };
    assert_eq!(code, Some(2), "an unknown shell is a usage error");
}

/// A local service that records each request (`METHOD target body`) and answers
/// `I saw METHOD target`.
async fn recording_service() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(head) = next_head(&mut s, &mut buf).await {
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < len {
                        let mut chunk = [0u8; 65536];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..len).collect();
                    let line =
                        head.lines().next().unwrap_or("").rsplit_once(' ').map(|x| x.0.to_string()).unwrap_or_default();
                    log.lock().unwrap().push(format!("{line} {}", String::from_utf8_lossy(&body)));
                    let answer = format!("I saw {line}");
                    let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}", answer.len());
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

/// `connect` serves the request inspector: a request through another node is listed with its
/// heads and body; headless Chromium (Selenium) opens the page, sees it, opens it, replays it
/// with the button (screenshots in CARGO_TARGET_TMPDIR/inspector-shots); the service gets it
/// twice. A body over 64 KiB is kept cut and marked; only the last 100 requests are kept; a
/// foreign Host, a non-JSON change and a foreign Origin are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_lists_requests_and_replays_them_in_a_browser() {
    let c = TestCluster::builder().start().await;
    let ctl = Ctl::logged_in(c.nodes[&1].api_url(), "inspecting");
    let (port, seen) = recording_service().await;
    let at = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let inspector = format!("http://{at}");
    let inspect = at.to_string();
    let extra = ["--temporary", "--inspect", inspect.as_str()];
    let (child, dnsname) = ctl
        .connect_with(&ctl.urls, port, "insp", &extra, std::process::Stdio::null(), std::process::Stdio::null())
        .await;
    let _child = Reaped(child);
    let public = format!("http://{}:8080", c.nodes[&2].ip);
    let http = reqwest::Client::new();
    eventually(std::time::Duration::from_secs(20), "the tunnel and the inspector", || {
        let (http, public, inspector, dnsname) = (http.clone(), public.clone(), inspector.clone(), dnsname.clone());
        async move {
            let up = http.get(format!("{public}/warm")).header("host", dnsname).send().await.ok()?.status() == 200;
            let listed = http.get(format!("{inspector}/api/requests")).send().await.ok()?.status() == 200;
            (up && listed).then_some(())
        }
    })
    .await;

    // Refused: a foreign Host (DNS rebinding), a change not in JSON, a foreign Origin.
    let r = http.get(format!("{inspector}/api/requests")).header("host", "evil.example:4040").send().await.unwrap();
    assert_eq!(r.status(), 403);
    // A replay of entry `id` with `body`, sent as `kind` from `origin`.
    let replay = |id: u64, kind: &'static str, origin: Option<&'static str>, body: &'static str| {
        let mut r = http.post(format!("{inspector}/api/requests/{id}/replay")).header("content-type", kind).body(body);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    assert_eq!(replay(1, "text/plain", None, "{}").await.unwrap().status(), 403);
    assert_eq!(replay(1, "application/json", Some("http://evil.example"), "{}").await.unwrap().status(), 403);
    let page = http.get(format!("{inspector}/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");

    // In the browser.
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("inspector-shots");
    std::fs::create_dir_all(&shots).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/inspector_browser.py");
    let args = vec![inspector.clone(), public.clone(), dnsname.clone(), shots.display().to_string()];
    let v: Value = serde_json::from_str(&browser_script(script, args).await).unwrap();
    assert_eq!(v["request_body"], "hello, inspector <b>not bold</b>", "{v}");
    assert!(v["response_body"].as_str().unwrap().contains("I saw POST /from-the-browser-test?x=1"), "{v}");
    assert_eq!(v["injected_elements"], 0, "the page took a body as HTML: {v}");
    assert!(v["replay_result"].as_str().unwrap().contains(": 200"), "{v}");
    assert_eq!(v["replay_rows"], 1, "{v}");
    for shot in ["1-empty", "2-listed", "3-detail", "4-replayed"] {
        assert!(shots.join(format!("{shot}.png")).metadata().unwrap().len() > 1000, "{shot}");
    }
    eprintln!("inspector screenshots: {}", shots.display());
    let twice = seen.lock().unwrap().iter().filter(|l| l.starts_with("POST /from-the-browser-test?x=1 hello")).count();
    assert_eq!(twice, 2, "the service got the request and its replay: {:?}", seen.lock().unwrap());

    // A body over 64 KiB: kept cut; replayed only with a body given, which the service gets.
    let big = "z".repeat(100 * 1024);
    let r = http.post(format!("{public}/big")).header("host", &dnsname).body(big.clone()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let list: Value = http.get(format!("{inspector}/api/requests")).send().await.unwrap().json().await.unwrap();
    let listed = list.as_array().unwrap().iter().find(|e| e["path"] == "/big").expect("listed").clone();
    assert!(listed["request"].get("body").is_none(), "the list leaves the bodies out");
    let id = listed["id"].as_u64().unwrap();
    let entry: Value = http.get(format!("{inspector}/api/requests/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!((entry["request"]["cut"].as_bool(), entry["request"]["body_size"].as_u64()), (Some(true), Some(102400)));
    assert_eq!(entry["request"]["body"].as_str().unwrap().len(), 64 * 1024);
    assert_eq!(entry["status"], 200);
    let r = replay(id, "application/json", None, "{}").await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("give a body"));
    let r = replay(id, "application/json", None, r#"{"body": "edited", "path": "/big?again=1"}"#).await.unwrap();
    assert_eq!(r.status(), 200);
    let again: Value = r.json().await.unwrap();
    assert_eq!((again["replay_of"].as_u64(), again["status"].as_u64()), (Some(id), Some(200)));
    assert!(seen.lock().unwrap().iter().any(|l| l == "POST /big?again=1 edited"), "{:?}", seen.lock().unwrap());
    assert_eq!(replay(id, "application/json", None, r#"{"bogus": 1}"#).await.unwrap().status(), 400);

    // Bounded: the last 100.
    for i in 0..120 {
        http.get(format!("{public}/n{i}")).header("host", &dnsname).send().await.unwrap();
    }
    let list: Value = http.get(format!("{inspector}/api/requests")).send().await.unwrap().json().await.unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 100);
    assert_eq!(list[0]["path"], "/n119", "newest first");
}

/// A child process killed when dropped, so a failed assertion leaves nothing running.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
