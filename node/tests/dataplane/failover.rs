//! A holder that dies, stops answering, restarts or loses the majority: its tunnels are released
//! or closed, and the clients reconnect elsewhere; live nodes' tunnels stay where they are.

use std::time::Duration;

use mysocket_api::SocketCreate;
use mysocket_testkit::*;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_holding_node_releases_its_tunnels() {
    let mut c = TestCluster::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "carol").await;
    let sock = api.connect(&SocketCreate { name: "svc".into(), ..Default::default() }).await.unwrap();
    let relay = sock.tunnels[0].local_port;
    let origin_port = origin().await;
    let (n1, n3) = (c.nodes[&1].ip.clone(), c.nodes[&3].ip.clone());

    let first = ssh_forward(&key, &u.user_name, &n3, relay, origin_port);
    eventually(Duration::from_secs(20), "the URL through node 3", || {
        let (n3, host) = (n3.clone(), sock.dnsname.clone());
        async move { (get(&n3, &host, None).await.0 == 200).then_some(()) }
    })
    .await;

    let t0 = std::time::Instant::now();
    c.kill9(3);
    let a1 = c.operator(1);
    eventually(Duration::from_secs(30), "the dead node's tunnel to be released", || {
        let a1 = a1.clone();
        async move {
            let v = a1.cluster().await.ok()?;
            (v.nodes.iter().find(|n| n.id == 3)?.tunnels == Some(0)).then_some(())
        }
    })
    .await;
    eprintln!("tunnel of the killed node released after {:?}", t0.elapsed());
    drop(first);

    let _second = ssh_forward(&key, &u.user_name, &n1, relay, origin_port);
    eventually(Duration::from_secs(20), "the URL through node 1 after the reconnect", || {
        let (n1, host) = (n1.clone(), sock.dnsname.clone());
        async move { (get(&n1, &host, None).await.0 == 200).then_some(()) }
    })
    .await;
    eprintln!("URL answering again through another node {:?} after the kill", t0.elapsed());
}

/// A new leader has heard from no follower yet: that is no silence, and it must not release
/// the tunnels of live nodes (it did, on becoming leader, before the first answers came).
/// Tunnels on both followers, the leader killed: whichever follower leads next, both tunnels
/// keep their node and epoch and both clients stay connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_keeps_the_tunnels_of_live_nodes() {
    let mut c = TestCluster::builder().start().await;
    let leader = c.agreed_leader(Duration::from_secs(20)).await;
    let followers: Vec<u64> = c.running().into_iter().filter(|id| *id != leader).collect();
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), followers[0], "nora").await;
    let origin_port = origin().await;
    let mut held = Vec::new();
    for (i, id) in followers.iter().enumerate() {
        let sock = api.connect(&SocketCreate { name: format!("s{i}"), ..Default::default() }).await.unwrap();
        let ssh = ssh_forward(&key, &u.user_name, &c.nodes[id].ip, sock.tunnels[0].local_port, origin_port);
        held.push((*id, sock.socket_id, ssh));
    }
    let holders = |api: mysocket_api::ApiClient, ids: Vec<String>| async move {
        let mut v = Vec::new();
        for id in &ids {
            let s = api.socket(id).await.ok()?;
            v.push(s.tunnels[0].session.as_ref().map(|h| (h.node_id, h.epoch)));
        }
        Some(v)
    };
    let ids: Vec<String> = held.iter().map(|(_, s, _)| s.clone()).collect();
    let before = eventually(Duration::from_secs(20), "both tunnels claimed on their followers", || {
        let (api, ids, want) = (api.clone(), ids.clone(), followers.clone());
        async move {
            let v = holders(api, ids).await?;
            v.iter().zip(&want).all(|(h, id)| h.is_some_and(|(n, _)| n == *id)).then_some(v)
        }
    })
    .await;

    c.kill9(leader);
    let next = c.agreed_leader(Duration::from_secs(30)).await;
    // Well past the first duty passes of the new leader, short of its liveness timeout for the
    // dead node (which held nothing).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let api = c.api(next).with_token(api.token().unwrap());
    let after = holders(api, ids).await.expect("the sockets through the new leader");
    assert_eq!(after, before, "a tunnel of a live node was released or moved when node {next} took over");
    for (id, _, ssh) in &mut held {
        assert!(ssh.0.try_wait().unwrap().is_none(), "the client of the tunnel on node {id} was disconnected");
    }
    assert!(!c.log(next).contains("releasing its tunnels"), "{}", c.log(next));
}

/// A whole-cluster restart is silence to no leader (every node answers the new one at once),
/// so the claims of the processes that died stay in the registry until something releases
/// them. An `ssh -R` client does not come back by itself: its tunnel must not stay "held" by a
/// node that has no session for it. The restarted holder releases it, the API shows it
/// disconnected, and every node answers 503 (no live tunnel), not 502 (a tunnel that refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_releases_the_claims_of_its_previous_process() {
    let mut c = TestCluster::builder().start().await;
    c.agreed_leader(Duration::from_secs(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "otto").await;
    let origin_port = origin().await;
    let sock = api.connect(&SocketCreate { name: "svc".into(), ..Default::default() }).await.unwrap();
    let n2 = c.nodes[&2].ip.clone();
    let ssh = ssh_forward(&key, &u.user_name, &n2, sock.tunnels[0].local_port, origin_port);
    answered(&n2, &sock.dnsname, "the URL through node 2").await;
    let held = api.socket(&sock.socket_id).await.unwrap().tunnels[0].session;
    assert_eq!(held.map(|h| h.node_id), Some(2), "the tunnel is held by node 2");

    for id in c.running() {
        c.kill9(id);
    }
    drop(ssh);
    for id in [1, 2, 3] {
        c.restart(id);
    }
    c.wait_ready().await;
    c.agreed_leader(Duration::from_secs(30)).await;
    let a1 = c.api(1).with_token(api.token().unwrap());
    eventually(Duration::from_secs(20), "the tunnel of node 2's previous process released", || {
        let (a1, id) = (a1.clone(), sock.socket_id.clone());
        async move { a1.socket(&id).await.ok()?.tunnels[0].session.is_none().then_some(()) }
    })
    .await;
    for id in [1, 2, 3] {
        let (status, body) = get(&c.nodes[&id].ip, &sock.dnsname, None).await;
        assert_eq!(status, 503, "through node {id}: {body}");
        assert!(body.contains("no live tunnel"), "through node {id}: {body}");
    }
    assert!(c.log(2).contains("claimed by this node's previous process"), "{}", c.log(2));
    let m = scrape(c.nodes[&2].ip.clone(), &c.operator_token).await;
    assert!(sample(&m, "mysocket_orphan_claims_released_total") >= 1.0);
}

/// A holder that stops answering (paused: alive, its sockets open, but silent) loses its
/// tunnels to the leader's liveness check within a few seconds, the public URL answers 503
/// through the others meanwhile, and once it runs again it learns of the release and closes
/// the client's session, which then reconnects elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_holder_is_released_and_closes_its_tunnel_when_it_wakes() {
    let c = TestCluster::builder().start().await;
    let leader = c.agreed_leader(Duration::from_secs(20)).await;
    let holder = c.running().into_iter().find(|id| *id != leader).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), leader, "quinn").await;
    let origin_port = origin().await;
    let sock = api.connect(&SocketCreate { name: "svc".into(), ..Default::default() }).await.unwrap();
    let mut ssh = ssh_forward(&key, &u.user_name, &c.nodes[&holder].ip, sock.tunnels[0].local_port, origin_port);
    let leader_ip = c.nodes[&leader].ip.clone();
    answered(&leader_ip, &sock.dnsname, "the URL through the leader").await;

    c.pause(holder);
    let t0 = std::time::Instant::now();
    eventually(Duration::from_secs(20), "the silent holder's tunnel released", || {
        let (api, id) = (api.clone(), sock.socket_id.clone());
        async move { api.socket(&id).await.ok()?.tunnels[0].session.is_none().then_some(()) }
    })
    .await;
    eprintln!("the paused holder's tunnel was released after {:?}", t0.elapsed());
    let (status, body) = get(&leader_ip, &sock.dnsname, None).await;
    assert_eq!(status, 503, "{body}");
    assert!(ssh.0.try_wait().unwrap().is_none(), "the paused node cannot have closed the session");

    c.resume(holder);
    eventually(Duration::from_secs(20), "the woken holder to close the released tunnel's session", || {
        let exited = ssh.0.try_wait().unwrap();
        async move { exited }
    })
    .await;
    let mut said = String::new();
    std::io::Read::read_to_string(&mut ssh.0.stderr.take().unwrap(), &mut said).unwrap();
    // (The release, seen on waking; or, had the pause outlasted the cut-off, its own fence.)
    assert!(said.contains("released") || said.contains("lost contact"), "the client was not told why: {said}");
}

/// A node that loses the majority closes the tunnels it holds, so that their clients, which
/// still reach it, reconnect to a node that can claim them: the leader has released them, and
/// a node cut off cannot learn that. Both ways to be cut off: a follower whose leader and
/// other follower stop answering, and a leader that no follower answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_majority_closes_its_tunnels() {
    let c = TestCluster::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "petra").await;
    let origin_port = origin().await;
    for round in ["follower", "leader"] {
        let leader = c.agreed_leader(Duration::from_secs(30)).await;
        let holder = if round == "leader" { leader } else { c.running().into_iter().find(|id| *id != leader).unwrap() };
        let sock = api.connect(&SocketCreate { name: format!("svc-{round}"), ..Default::default() }).await.unwrap();
        let ip = c.nodes[&holder].ip.clone();
        let mut ssh = ssh_forward(&key, &u.user_name, &ip, sock.tunnels[0].local_port, origin_port);
        answered(&ip, &sock.dnsname, &format!("the URL through node {holder}, the {round}")).await;

        let others: Vec<u64> = c.running().into_iter().filter(|id| *id != holder).collect();
        for id in &others {
            c.pause(*id);
        }
        let t0 = std::time::Instant::now();
        let closed = eventually(Duration::from_secs(30), &format!("the {round} cut off to close its tunnel"), || {
            let exited = ssh.0.try_wait().unwrap();
            async move { exited }
        })
        .await;
        eprintln!("the {round} closed its tunnel {:?} after losing the majority ({closed})", t0.elapsed());
        for id in &others {
            c.resume(*id);
        }
        // OpenSSH prints the server's reason for disconnecting on stderr.
        let mut said = String::new();
        std::io::Read::read_to_string(&mut ssh.0.stderr.take().unwrap(), &mut said).unwrap();
        assert!(said.contains("lost contact with the cluster"), "the client was not told why: {said}");
        assert!(c.log(holder).contains("closing the tunnels held here"), "{}", c.log(holder));
        let m = scrape(ip.clone(), &c.operator_token).await;
        assert!(sample(&m, r#"mysocket_tunnels_closed_total{reason="cut_off"}"#) >= 1.0);
    }
}
