//! Load generator for `bench/registry.sh`: the same shape of write load (create then delete a
//! record, one operation each) against mysocket's API (a tunnel of a socket) or etcd's v3 JSON
//! gateway (a key), at a given concurrency, over the same HTTP client. Prints one JSON line:
//! writes/s, p50 and p99 latency.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use mysocket_api::ApiClient;
use mysocket_api::SocketCreate;
use mysocket_api::UserCreate;

#[derive(Parser, Debug)]
struct Args {
    /// `mysocket` or `etcd`.
    #[arg(long)]
    target: String,
    /// Endpoints, comma separated (API URLs for mysocket, client URLs for etcd). Clients are
    /// spread over them.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    #[arg(long)]
    clients: usize,
    /// Seconds of measured load.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// SSH public key for the bench accounts (mysocket only).
    #[arg(long, default_value = "")]
    sshkey: String,
    /// Sockets per account allowed by the cluster (mysocket only).
    #[arg(long, default_value_t = 10)]
    sockets_per_account: usize,
}

struct Stats {
    latencies: Vec<Duration>,
    errors: u64,
}

/// What one client works on: (endpoint, token, key) — for mysocket the key is a socket of the
/// client's own account, for etcd a key prefix.
type Slot = (String, String, String);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .pool_idle_timeout(Duration::from_secs(20))
        .timeout(Duration::from_secs(30))
        .build()?;
    // Setup (not measured).
    let slots = if args.target == "mysocket" { mysocket_slots(&args).await? } else { etcd_slots(&args) };

    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let http = Arc::new(http);
    let mut workers = Vec::new();
    for slot in slots {
        workers.push(tokio::spawn(writes(http.clone(), args.target.clone(), slot, deadline)));
    }
    let start = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        let st = w.await?;
        all.extend(st.latencies);
        errors += st.errors;
    }
    let elapsed = start.elapsed().as_secs_f64().max(args.secs as f64);
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "{}",
        serde_json::json!({
            "target": args.target, "clients": args.clients, "writes": all.len(), "errors": errors,
            "writes_per_sec": all.len() as f64 / elapsed, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
        })
    );
    Ok(())
}

/// One (token, socket) per client: accounts of `--sockets-per-account` sockets each, spread
/// over the endpoints, made in parallel.
async fn mysocket_slots(args: &Args) -> anyhow::Result<Vec<Slot>> {
    let run = std::process::id();
    let accounts = args.clients.div_ceil(args.sockets_per_account);
    let mut setups = Vec::new();
    for a in 0..accounts {
        let ep = args.endpoints[a % args.endpoints.len()].clone();
        let key = args.sshkey.clone();
        let per = args.sockets_per_account.min(args.clients - a * args.sockets_per_account);
        setups.push(tokio::spawn(async move {
            let api = ApiClient::new([ep.clone()]);
            let email = format!("bench-{run}-{a}@example.com");
            let account = UserCreate {
                name: format!("bench {a}"),
                email: email.clone(),
                password: "bench-password".into(),
                sshkey: key,
            };
            // A node hashing as many passwords as it allows at once answers 503: wait, then again.
            busy_retry(|| api.create_user(&account)).await.context("create bench account")?;
            let token = busy_retry(|| api.login(&email, "bench-password")).await.context("log in")?.token;
            let api = api.with_token(token.clone());
            let mut out = Vec::new();
            for s in 0..per {
                let sock = api
                    .create_socket(&SocketCreate {
                        name: format!("bench-{s}"),
                        socket_type: Some("http".into()),
                        ..Default::default()
                    })
                    .await
                    .context("create bench socket")?;
                out.push((ep.clone(), token.clone(), sock.socket_id));
            }
            anyhow::Ok(out)
        }));
    }
    let mut slots = Vec::new();
    for s in setups {
        slots.extend(s.await??);
    }
    Ok(slots)
}

/// Runs `call` again while the node answers 503 (busy hashing passwords), up to a minute.
async fn busy_retry<T, F, Fut>(mut call: F) -> Result<T, mysocket_api::client::ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, mysocket_api::client::ClientError>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match call().await {
            Err(e) if e.status() == Some(reqwest::StatusCode::SERVICE_UNAVAILABLE) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            r => return r,
        }
    }
}

fn etcd_slots(args: &Args) -> Vec<Slot> {
    (0..args.clients)
        .map(|i| (args.endpoints[i % args.endpoints.len()].clone(), String::new(), format!("bench/{i}")))
        .collect()
}

/// One client's load until the deadline: a create then a delete, two writes, each timed.
async fn writes(http: Arc<reqwest::Client>, target: String, (ep, token, key): Slot, deadline: Instant) -> Stats {
    let mut st = Stats { latencies: Vec::new(), errors: 0 };
    let mut n = 0u64;
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let created = if target == "mysocket" {
            http.post(format!("{ep}/socket/{key}/tunnel")).header("x-access-token", &token).body("{}").send().await
        } else {
            let body = serde_json::json!({"key": b64(&format!("{key}/{n}")), "value": b64("tunnel")});
            http.post(format!("{ep}/v3/kv/put")).json(&body).send().await
        };
        let id = match created {
            Ok(r) if r.status().is_success() => {
                st.latencies.push(t0.elapsed());
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                v["tunnel_id"].as_str().unwrap_or_default().to_string()
            }
            _ => {
                st.errors += 1;
                continue;
            }
        };
        let t1 = Instant::now();
        let deleted = if target == "mysocket" {
            http.delete(format!("{ep}/socket/{key}/tunnel/{id}")).header("x-access-token", &token).send().await
        } else {
            let body = serde_json::json!({"key": b64(&format!("{key}/{n}"))});
            http.post(format!("{ep}/v3/kv/deleterange")).json(&body).send().await
        };
        match deleted {
            Ok(r) if r.status().is_success() => st.latencies.push(t1.elapsed()),
            _ => st.errors += 1,
        }
        n += 1;
    }
    st
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
