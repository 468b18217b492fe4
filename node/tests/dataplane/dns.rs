//! The cluster's authoritative DNS, asked with `dig` (Debian's `bind9-dnsutils`) on every node:
//! the zone's SOA and NS, socket names answered with the live nodes, NXDOMAIN and REFUSED,
//! malformed packets, the per-source rate limit, a killed node leaving the answers and coming
//! back, and a node left alone answering SERVFAIL.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use mysocket_api::SocketCreate;
use mysocket_testkit::*;

use crate::support::*;

const DOMAIN: &str = "edge.test";

/// What `dig` says: the status, the header's flags, and the answer records (name, TTL, type,
/// data) — or `None` when no answer came.
#[derive(Debug)]
struct Dig {
    status: String,
    flags: String,
    answers: Vec<(String, u32, String, String)>,
    authority: Vec<String>,
}

fn dig(server: &str, extra: &[&str]) -> Option<Dig> {
    let out = Command::new("dig")
        .args([&format!("@{server}"), "-p", "5353", "+noall", "+comments", "+answer", "+authority"])
        .args(["+tries=1", "+time=2"])
        .args(extra)
        .output()
        .expect("dig (bind9-dnsutils) is installed");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let status = text.split("status: ").nth(1)?.split(',').next()?.to_string();
    let flags = text.split(";; flags: ").nth(1)?.split(';').next()?.to_string();
    let (mut answers, mut authority, mut section) = (Vec::new(), Vec::new(), "");
    for line in text.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.starts_with(';') || line.trim().is_empty() {
            continue;
        } else if section == "answer" {
            let f: Vec<&str> = line.split_whitespace().collect();
            answers.push((f[0].to_string(), f[1].parse().unwrap(), f[3].to_string(), f[4..].join(" ")));
        } else if section == "authority" {
            authority.push(line.to_string());
        }
    }
    Some(Dig { status, flags, answers, authority })
}

/// The A records `server` gives for `name`.
fn addresses(server: &str, name: &str) -> BTreeSet<String> {
    dig(server, &[name, "A"]).map(|d| d.answers.into_iter().map(|a| a.3).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_answers_the_zone_with_the_live_nodes() {
    let mut c =
        TestCluster::builder().nodes(3).arg("--domain").arg(DOMAIN).arg("--dns-listen").arg("{ip}:5353").start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_key, _u, api) = ssh_user(&c, dir.path(), 1, "ada").await;
    let demo = api
        .create_socket(&SocketCreate { name: "demo".into(), subdomain: Some("demo".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(demo.dnsname, format!("demo.{DOMAIN}"));
    let ips: BTreeSet<String> = (1..=3).map(|id| c.node_ip(id)).collect();

    for id in 1..=3 {
        let ip = c.node_ip(id);
        // Every node lists every live node for a socket's name and the apex, with the short TTL.
        let got = eventually(Duration::from_secs(10), "the socket's name on every node", || {
            let got = addresses(&ip, &demo.dnsname);
            async move { (got.len() == 3).then_some(got) }
        })
        .await;
        assert_eq!(got, ips, "node {id}");
        let d = dig(&ip, &[&demo.dnsname, "A"]).unwrap();
        assert_eq!(d.status, "NOERROR");
        assert!(d.flags.split_whitespace().any(|f| f == "aa"), "authoritative: {d:?}");
        assert!(!d.flags.split_whitespace().any(|f| f == "ra"), "no recursion offered: {d:?}");
        assert!(d.answers.iter().all(|a| a.1 == 5), "TTL 5 s: {d:?}");
        assert_eq!(addresses(&ip, DOMAIN), ips, "the apex on node {id}");
        // The same over TCP.
        let t = dig(&ip, &["+tcp", &demo.dnsname, "A"]).unwrap();
        assert_eq!(t.answers.len(), 3, "over TCP: {t:?}");

        // The zone's SOA and its name servers, one per live node, each with its address.
        let soa = dig(&ip, &[DOMAIN, "SOA"]).unwrap();
        assert_eq!((soa.status.as_str(), soa.answers.len()), ("NOERROR", 1), "{soa:?}");
        assert!(soa.answers[0].3.contains(&format!("hostmaster.{DOMAIN}.")), "{soa:?}");
        let ns = dig(&ip, &[DOMAIN, "NS"]).unwrap();
        let names: BTreeSet<String> = ns.answers.iter().map(|a| a.3.clone()).collect();
        let want: BTreeSet<String> = (1..=3).map(|n| format!("ns{n}.{DOMAIN}.")).collect();
        assert_eq!(names, want, "{ns:?}");
        assert_eq!(addresses(&ip, &format!("ns2.{DOMAIN}")), BTreeSet::from([c.node_ip(2)]));

        // No such name: NXDOMAIN with the SOA for negative caching; a name of the domain
        // without records of a type: NOERROR and nothing.
        let nx = dig(&ip, &[&format!("nobody.{DOMAIN}"), "A"]).unwrap();
        assert_eq!(nx.status, "NXDOMAIN", "{nx:?}");
        assert!(nx.authority.iter().any(|l| l.contains("SOA")), "{nx:?}");
        let mx = dig(&ip, &[&demo.dnsname, "MX"]).unwrap();
        assert_eq!((mx.status.as_str(), mx.answers.len()), ("NOERROR", 0), "{mx:?}");
        // Outside the domain: refused, recursion desired or not.
        for name in ["example.com", "test", "xedge.test"] {
            let r = dig(&ip, &["+recurse", name, "A"]).unwrap();
            assert_eq!(r.status, "REFUSED", "{name}: {r:?}");
        }
    }

    // Malformed messages: no answer or FORMERR, and the server goes on answering.
    let sock = std::net::UdpSocket::bind(format!("{}:0", c.node_ip(6))).unwrap();
    let server = format!("{}:5353", c.node_ip(1));
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 5],
        vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x3f, 0x61],
        (0..512u32).map(|i| (i * 7919 % 251) as u8).collect(),
        [&[0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0][..], &[0xc0, 0x0c, 0, 1, 0, 1]].concat(),
    ];
    for g in &garbage {
        sock.send_to(g, &server).unwrap();
    }
    assert_eq!(addresses(&c.node_ip(1), &demo.dnsname), ips, "answers after garbage");

    // One source past its rate (100 a second, a burst of as many): its queries are dropped,
    // others' still answered.
    let flood = std::net::UdpSocket::bind(format!("{}:0", c.node_ip(7))).unwrap();
    flood.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let query = |id: u16| {
        let mut q = vec![(id >> 8) as u8, id as u8, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in demo.dnsname.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    };
    for id in 0..600u16 {
        flood.send_to(&query(id), &server).unwrap();
    }
    let mut answered = 0;
    let mut buf = [0u8; 1500];
    while flood.recv_from(&mut buf).is_ok() {
        answered += 1;
    }
    println!("600 queries at once from one address: {answered} answered");
    assert!((50..=300).contains(&answered), "{answered} of 600 answered");
    assert_eq!(addresses(&c.node_ip(1), &demo.dnsname), ips, "another address is answered");
    let m = scrape(c.node_ip(1), &c.operator_token).await;
    // What reached the server past the bucket was dropped and counted (a loaded machine's
    // kernel may drop some of the 600 before the server reads them).
    assert!(sample(&m, r#"mysocket_dns_queries_total{answer="dropped"}"#) >= 1.0, "drops counted");
    assert!(sample(&m, r#"mysocket_dns_queries_total{answer="nxdomain"}"#) >= 1.0);
    assert!(sample(&m, r#"mysocket_dns_queries_total{answer="refused"}"#) >= 3.0);

    // A node killed leaves the answers of the others once the leader has marked it dead.
    let gone = c.node_ip(3);
    let killed = Instant::now();
    c.kill9(3);
    for id in 1..=2 {
        let ip = c.node_ip(id);
        eventually(Duration::from_secs(15), "the killed node out of the answers", || {
            let got = addresses(&ip, &demo.dnsname);
            let gone = gone.clone();
            async move { (got.len() == 2 && !got.contains(&gone)).then_some(()) }
        })
        .await;
        let ns = dig(&ip, &[DOMAIN, "NS"]).unwrap();
        assert_eq!(ns.answers.len(), 2, "its name server gone too: {ns:?}");
    }
    println!("node 3 killed: out of the answers of nodes 1 and 2 after {:?}", killed.elapsed());
    // Back again once it restarts.
    c.restart(3);
    eventually(Duration::from_secs(20), "the restarted node back in the answers", || {
        let got = addresses(&c.node_ip(1), &demo.dnsname);
        async move { (got.len() == 3).then_some(()) }
    })
    .await;

    // A node left alone (the other two killed) stops answering for the cluster: SERVFAIL, so
    // resolvers ask another name server.
    c.kill9(1);
    c.kill9(2);
    let alone = c.node_ip(3);
    eventually(Duration::from_secs(15), "SERVFAIL from a node cut off from the majority", || {
        let d = dig(&alone, &[&demo.dnsname, "A"]);
        async move { d.filter(|d| d.status == "SERVFAIL").map(|_| ()) }
    })
    .await;
}
