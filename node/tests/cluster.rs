//! The replicated registry with real `mysocketd` processes: replication, leader failover,
//! catch-up after restart and by snapshot, kill -9 of the whole cluster, membership changes,
//! the cluster credential, and configuration errors.

use std::time::Duration;
use std::time::Instant;

use mysocket_api::internal::internal_client::InternalClient;
use mysocket_api::internal::Empty;
use mysocket_api::ApiClient;
use mysocket_testkit::*;

async fn create_users(api: &ApiClient, range: std::ops::Range<usize>) {
    for n in range {
        let u = api.create_user(&user(n)).await.unwrap_or_else(|e| panic!("create user {n}: {e}"));
        assert_eq!(u.email, user(n).email);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_fail_over_and_catch_up() {
    let mut c = TestCluster::builder().start().await;

    // Writes through each node are visible through every other node at once (linearizable).
    for (i, via) in [1u64, 2, 3].iter().enumerate() {
        c.api(*via).create_user(&user(i)).await.unwrap();
        for other in [1u64, 2, 3] {
            c.api(other)
                .login(&user(i).email, &user(i).password)
                .await
                .unwrap_or_else(|e| panic!("user created via node {via} cannot log in via node {other}: {e}"));
        }
    }
    let d = c.converged().await;
    assert_eq!(d.accounts, 3);

    // GET /cluster shows all three, one leader, every address registered.
    let view = c.operator(2).cluster().await.unwrap();
    assert_eq!(view.nodes.len(), 3);
    assert!(view.nodes.iter().all(|n| n.voter == Some(true) && !n.api_addr.is_empty() && n.last_applied.is_some()));
    let leader = view.leader.expect("a leader");

    // kill -9 the leader: the other two agree on a new one and writes resume.
    let t0 = Instant::now();
    c.kill9(leader);
    let new_leader = c.agreed_leader(Duration::from_secs(20)).await;
    let failover = t0.elapsed();
    eprintln!("leader failover (kill -9 of node {leader} until the others agree on node {new_leader}): {failover:?}");
    assert_ne!(new_leader, leader);
    let survivor = c.running()[0];
    create_users(&c.api(survivor), 3..8).await;

    // The killed node restarts and catches up.
    c.restart(leader);
    c.wait_ready().await;
    let d = c.converged().await;
    assert_eq!(d.accounts, 8);
    c.api(leader).login(&user(7).email, &user(7).password).await.unwrap();
}

/// Replication runs as one stream per follower with several requests in flight. A follower
/// that freezes (SIGSTOP: its sockets stay open and nothing answers) must not hold up what the
/// other follower can commit, and the leader's stream to it must work again once it wakes:
/// the other follower freezes next, so every later write needs the first one's stream. A
/// follower that is dead (its port refuses connections) is retried at the backoff's pace,
/// not in a loop (which once logged 37,000 refusals in two seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_or_dead_follower_stalls_no_write_and_costs_no_retry_loop() {
    let mut c = TestCluster::builder().start().await;
    let leader = c.agreed_leader(Duration::from_secs(20)).await;
    let followers: Vec<u64> = c.running().into_iter().filter(|id| *id != leader).collect();
    let api = c.api(leader);

    c.pause(followers[0]);
    create_users(&api, 0..10).await;
    // Longer than the append deadline (500 ms): the leader gives up on the frozen stream.
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.resume(followers[0]);
    let woken = c.operator(followers[0]);
    eventually(Duration::from_secs(20), "the woken follower to catch up", || {
        let woken = woken.clone();
        async move { (woken.digest().await.ok()?.accounts == 10).then_some(()) }
    })
    .await;

    c.pause(followers[1]);
    create_users(&api, 10..20).await;
    woken.login(&user(19).email, &user(19).password).await.expect("the last write, read through the woken follower");
    c.resume(followers[1]);
    assert_eq!(c.converged().await.accounts, 20);
    assert_eq!(
        c.agreed_leader(Duration::from_secs(5)).await,
        leader,
        "no election: the frozen followers did not depose the leader"
    );

    let before = c.log(leader).len();
    c.kill9(followers[1]);
    create_users(&api, 20..25).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let retries = c.log(leader)[before..].matches("ReplicationCore recv RPCError").count();
    assert!(retries < 100, "the leader retried the dead follower {retries} times in about 3 s");
    assert!(retries > 0, "the leader never tried the dead follower (is the log line still written?)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_all_three_keeps_every_acknowledged_write() {
    let mut c = TestCluster::builder().start().await;
    // Concurrent writers through all nodes; every acknowledged write must survive.
    let mut tasks = Vec::new();
    for w in 0..3u64 {
        let api = c.api(w + 1);
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..8usize {
                let n = (w as usize) * 100 + i;
                if api.create_user(&user(n)).await.is_ok() {
                    acked.push(n);
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), 24, "all writes acknowledged in a healthy cluster");
    for id in [1, 2, 3] {
        c.kill9(id);
    }
    for id in [1, 2, 3] {
        c.restart(id);
    }
    c.wait_ready().await;
    let d = c.converged().await;
    assert_eq!(d.accounts, acked.len());
    for n in acked {
        c.api(1 + (n as u64 % 3)).login(&user(n).email, &user(n).password).await.unwrap();
    }
}

/// A node behind the leader's compacted log catches up by snapshot, streamed to disk as it
/// arrives: with chunks of at most 4 KiB (the most of a snapshot a node holds in memory at
/// once; a snapshot used to be buffered whole, up to a fixed cap) it installs a snapshot many
/// times that size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_behind_a_compacted_log_catches_up_by_snapshot() {
    const CHUNK: u64 = 4096;
    let mut c = TestCluster::builder().snapshot_threshold(10).arg("--snapshot-chunk-bytes=4096").start().await;
    let had = c.converged().await.last_applied;
    c.kill9(3);
    let api = ApiClient::new([c.nodes[&1].api_url(), c.nodes[&2].api_url()]);
    create_users(&api, 0..60).await;
    // The leader has compacted past everything node 3 has, so only a snapshot can help it.
    let leader = c.agreed_leader(Duration::from_secs(10)).await;
    let la = c.operator(leader);
    eventually(Duration::from_secs(20), "the leader to compact past node 3's log", || {
        let la = la.clone();
        async move { (la.digest().await.ok()?.purged_index.unwrap_or(0) > had + 1).then_some(()) }
    })
    .await;
    c.restart(3);
    c.wait_ready().await;
    let d = c.converged().await;
    assert_eq!(d.accounts, 60);
    let d3 = c.operator(3).digest().await.unwrap();
    assert!(d3.snapshots_installed >= 1, "node 3 caught up without a snapshot: {d3:?}");
    c.api(3).login(&user(59).email, &user(59).password).await.unwrap();
    let log = c.log(3);
    let received: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("received snapshot"))
        .filter_map(|l| l.split("bytes=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(
        received.iter().any(|&b| b > 4 * CHUNK),
        "node 3 received no snapshot larger than four chunks: {received:?}"
    );
    // Nothing of it is left behind but the snapshot kept.
    let dir = c.data_dir(3).join("snapshots");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("current.snapshot")], "in {dir:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_and_one_is_removed_while_writes_continue() {
    let mut c = TestCluster::builder().start().await;
    let urls: Vec<String> = [1u64, 2, 3].iter().map(|id| c.nodes[id].api_url()).collect();

    let writer = {
        // Through the two nodes that stay; node 1 is removed and stopped meanwhile.
        let api = ApiClient::new(urls[1..].to_vec());
        tokio::spawn(async move {
            let mut n = 1000;
            let mut ok = 0;
            let stop = Instant::now() + Duration::from_secs(8);
            while Instant::now() < stop {
                api.create_user(&user(n))
                    .await
                    .unwrap_or_else(|e| panic!("write {n} failed during membership change: {e}"));
                ok += 1;
                n += 1;
            }
            ok
        })
    };

    let peers: Vec<String> = [1u64, 2, 3].iter().map(|id| c.node_raft_addr(*id)).collect();
    c.spawn(4, vec!["--join".into(), peers.join(",")]);
    let api = c.operator(1);
    eventually(Duration::from_secs(30), "node 4 to become a voter", || {
        let api = api.clone();
        async move {
            let v = api.cluster().await.ok()?;
            v.nodes.iter().any(|n| n.id == 4 && n.voter == Some(true)).then_some(())
        }
    })
    .await;

    c.operator(2).remove_node(1).await.unwrap();
    c.kill9(1);
    let written = writer.await.unwrap();
    assert!(written > 0);

    let view = c.api(4).cluster().await.unwrap();
    let ids: Vec<u64> = view.nodes.iter().map(|n| n.id).collect();
    assert_eq!(ids, vec![2, 3, 4]);
    let d = c.converged().await;
    assert_eq!(d.accounts, written);

    // A removed id is never reused; a member id at another address is refused.
    let err = c.operator(2).add_node(1, &c.node_raft_addr(1)).await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(409), "{err}");
    let err = c.operator(2).add_node(3, "127.0.0.99:7071").await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(409), "{err}");
    let err = c.operator(2).add_node(0, "x").await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(400), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_cluster_credential_is_refused() {
    let c = TestCluster::builder().start().await;
    let addr = c.node_raft_addr(1);
    // A bare gRPC connection, as any HTTP/2 client makes: closed before any call is served.
    let bare = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let err = InternalClient::new(bare).node_status(Empty {}).await.unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);
    // The control hello with a wrong credential: closed too.
    let err = InternalClient::new(control_channel(&addr, "not-the-secret-at-all")).node_status(Empty {}).await;
    assert!(err.is_err(), "a wrong credential in the hello was served");
    // The right hello, but calls without the credential, or with a wrong one, also for Raft.
    let ch = control_channel(&addr, &c.secret);
    let err = InternalClient::new(ch.clone()).node_status(Empty {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut wrong = InternalClient::with_interceptor(ch.clone(), |mut r: tonic::Request<()>| {
        r.metadata_mut().insert(mysocket_api::CLUSTER_CREDENTIAL_HEADER, "not-the-secret-at-all".parse().unwrap());
        Ok(r)
    });
    let err = wrong.vote(mysocket_api::internal::Blob { json: b"{}".to_vec() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    // The credential on the connection and on the call works.
    let secret = c.secret.clone();
    let mut right = InternalClient::with_interceptor(ch, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert(mysocket_api::CLUSTER_CREDENTIAL_HEADER, secret.parse().unwrap());
        Ok(r)
    });
    assert_eq!(right.node_status(Empty {}).await.unwrap().get_ref().node_id, 1);
    let log = c.log(1);
    assert!(log.contains("neither a relay nor a control connection"), "the bare connection's refusal is logged");
    assert!(log.contains("refused an internal connection without the cluster credential"), "the hello's is");
    assert!(log.contains("refused internal call"), "the call's refusal is logged");
    assert!(!log.contains("not-the-secret-at-all"), "a presented credential is never logged");
    // The cluster is unharmed.
    c.api(1).create_user(&user(1)).await.unwrap();
}

/// A gRPC channel to the internal port at `addr` whose connections open with the control
/// hello (`MSCTRL01`, then the credential behind a big-endian u16 length).
fn control_channel(addr: &str, credential: &str) -> tonic::transport::Channel {
    let (addr, credential) = (addr.to_string(), credential.as_bytes().to_vec());
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_with_connector_lazy(
        tower::service_fn(move |_: tonic::transport::Uri| {
            let (addr, credential) = (addr.clone(), credential.clone());
            async move {
                use tokio::io::AsyncWriteExt;
                let mut s = tokio::net::TcpStream::connect(&addr).await?;
                let mut hello = b"MSCTRL01".to_vec();
                hello.extend_from_slice(&(credential.len() as u16).to_be_bytes());
                hello.extend_from_slice(&credential);
                s.write_all(&hello).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }),
    )
}

/// SIGTERM: the API stops taking connections, a request already on its way is answered (and
/// its write kept), the node exits cleanly and comes back with its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_gracefully_and_restart_keeps_state() {
    use tokio::io::AsyncWriteExt;
    let mut c = TestCluster::builder().start().await;
    c.api(1).create_user(&user(1)).await.unwrap();
    // A request to node 2 with half its body sent when the signal comes.
    let body = serde_json::to_vec(&user(2)).unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    let api2 = c.nodes[&2].api_url().trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&api2).await.unwrap();
    let head = format!(
        "POST /user HTTP/1.1\r\nHost: {api2}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.terminate(2);
    eventually(Duration::from_secs(5), "node 2's API to stop taking connections", || {
        let api2 = api2.clone();
        async move { tokio::net::TcpStream::connect(&api2).await.is_err().then_some(()) }
    })
    .await;
    s.write_all(rest).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), read_http_answer(&mut s, "POST")).await;
    let answer = answer.ok().and_then(Result::ok).map(|a| a.text()).unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 200 "), "the request in flight: {answer:?}");
    let status = c.wait_exit(2);
    assert!(status.success(), "SIGTERM exit status {status:?}");
    assert!(c.log(2).contains("stopped"));
    c.restart(2);
    c.wait_ready().await;
    c.converged().await;
    c.api(2).login(&user(1).email, &user(1).password).await.unwrap();
    c.api(2).login(&user(2).email, &user(2).password).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_port_can_run_mutual_tls() {
    let mut c = TestCluster::builder().internal_tls().start().await;
    c.api(1).create_user(&user(1)).await.unwrap();
    c.api(3).login(&user(1).email, &user(1).password).await.unwrap();
    // Plaintext gRPC to a TLS internal port gets nowhere.
    let plain =
        tonic::transport::Endpoint::from_shared(format!("http://{}", c.node_raft_addr(2))).unwrap().connect().await;
    if let Ok(ch) = plain {
        assert!(InternalClient::new(ch).node_status(Empty {}).await.is_err(), "plaintext call answered");
    }
    // Failover works over TLS too.
    let leader = c.agreed_leader(Duration::from_secs(10)).await;
    c.kill9(leader);
    let survivor = c.agreed_leader(Duration::from_secs(20)).await;
    c.api(survivor).create_user(&user(2)).await.unwrap();
    c.restart(leader);
    c.wait_ready().await;
    assert_eq!(c.converged().await.accounts, 2);
}
