//! Property tests of the registry's apply: determinism, uniqueness rules for any command
//! sequence, rejections that change nothing, and idempotent retries.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use mysocket_raft_store::registry::Dirty;
use mysocket_raft_store::*;
use proptest::prelude::*;
use uuid::Uuid;

const PORT_MIN: u16 = 20000;
const PORT_MAX: u16 = 20003;

fn uid(n: u8) -> Uuid {
    Uuid::from_u128(0x1000 + n as u128)
}
fn sid(n: u8) -> Uuid {
    Uuid::from_u128(0x2000 + n as u128)
}
fn tid(n: u8) -> Uuid {
    Uuid::from_u128(0x3000 + n as u128)
}

fn bootstrap() -> Request {
    Request {
        request_id: None,
        at_ms: 0,
        cmd: Command::Bootstrap(ClusterConfig {
            domain: "localhost".into(),
            tcp_port_min: PORT_MIN,
            tcp_port_max: PORT_MAX,
            ssh_host_key: String::new(),
            tls_ca_cert: String::new(),
            tls_ca_key: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            token_key: "00".into(),
            operator_token_hash: String::new(),
            created_at_ms: 0,
        }),
    }
}

fn limits() -> SocketLimits {
    SocketLimits { max_http: 3, max_tcp: 2, max_tunnels_per_socket: 3 }
}

fn arb_cmd() -> impl Strategy<Value = Command> {
    let emails = prop::sample::select(vec!["a@x.io", "A@X.io", "b@x.io", "c@y.io", "d@y.io"]);
    let stems = prop::sample::select(vec!["brave-otter", "calm-heron", "dark-lynx"]);
    let types = prop::sample::select(vec![SocketType::Http, SocketType::Https, SocketType::Tcp, SocketType::Tls]);
    prop_oneof![
        (0u8..4, emails).prop_map(|(u, e)| Command::CreateAccount {
            user_id: uid(u),
            name: "n".into(),
            email: e.into(),
            password_hash: "h".into(),
            sshkey: "k".into(),
            max_accounts: None,
        }),
        (0u8..4, 0u8..8, stems, 0u16..3, types, 0u16..8, prop::option::of((0u8..12, 0u16..4)), any::<(bool, bool)>())
            .prop_map(|(u, s, stem, d, t, ph, first, (label_chosen, port_chosen))| Command::CreateSocket {
                user_id: uid(u),
                socket: NewSocket {
                    socket_id: sid(s),
                    name: "s".into(),
                    socket_type: t,
                    dnsname_hint: format!("{stem}-{d:04}"),
                    port_hint: PORT_MIN + ph,
                    label_chosen,
                    port_chosen,
                    custom_domain: (stem == "brave-otter").then(|| CustomDomain {
                        name: format!("app{d}.example.com"),
                        token: "t".into(),
                        verified: false,
                    }),
                    access: Access::default(),
                },
                limits: limits(),
                first_tunnel: first.map(|(t, p)| NewTunnel { tunnel_id: tid(t), local_port_hint: 10_000 + p }),
            }),
        (0u8..4, 0u8..8).prop_map(|(u, s)| Command::DeleteSocket { user_id: uid(u), socket_id: sid(s) }),
        (0u8..4, 0u8..8, prop::option::of(0u16..3)).prop_map(|(u, s, d)| Command::SetSocketDomain {
            user_id: uid(u),
            socket_id: sid(s),
            domain: d.map(|d| CustomDomain { name: format!("app{d}.example.com"), token: "t".into(), verified: false }),
        }),
        (0u8..8, 0u16..3)
            .prop_map(|(s, d)| Command::VerifyDomain { socket_id: sid(s), name: format!("app{d}.example.com") }),
        (0u8..4, 0u8..8, 0u8..12, 0u16..4).prop_map(|(u, s, t, p)| Command::CreateTunnel {
            user_id: uid(u),
            socket_id: sid(s),
            tunnel: NewTunnel { tunnel_id: tid(t), local_port_hint: 10_000 + p },
            limits: limits(),
        }),
        (0u8..4, 0u8..8, 0u8..12).prop_map(|(u, s, t)| Command::DeleteTunnel {
            user_id: uid(u),
            socket_id: sid(s),
            tunnel_id: tid(t)
        }),
        (0u8..4, 0u8..12, 1u64..4).prop_map(|(u, t, n)| Command::ClaimTunnel {
            user_id: uid(u),
            tunnel_id: tid(t),
            node_id: n
        }),
        (0u8..12, 1u64..4, 0u64..6).prop_map(|(t, n, e)| Command::ReleaseTunnel {
            tunnel_id: tid(t),
            node_id: n,
            epoch: e
        }),
        (1u64..4, any::<bool>()).prop_map(|(n, alive)| Command::SetNodeAlive { node_id: n, alive }),
        (1u64..4).prop_map(|n| Command::RegisterNode(NodeRecord {
            node_id: n,
            raft_addr: format!("127.0.0.{n}:7071"),
            api_addr: String::new(),
            ssh_addr: String::new(),
            http_addr: String::new(),
            https_addr: String::new(),
            public_ips: vec![std::net::Ipv4Addr::new(127, 0, 0, n as u8).into()],
            alive: true,
            changed_at_ms: 0,
        })),
        (1u64..4).prop_map(|n| Command::RetireNode { node_id: n }),
        (0u8..4, 0u8..6, any::<bool>(), prop::option::of(0u64..1000), 0u8..3).prop_map(|(u, c, key, exp, name)| {
            Command::IssueCredential(Credential {
                id: cid(c),
                user_id: uid(u),
                kind: if key { CredentialKind::ApiKey } else { CredentialKind::Token },
                name: format!("k{name}"),
                created_at_ms: 0,
                expires_at_ms: exp,
                secret_hash: key.then(|| "ab".repeat(32)),
            })
        }),
        (0u8..4, 0u8..6).prop_map(|(u, c)| Command::RevokeCredential { user_id: uid(u), id: cid(c) }),
    ]
}

fn cid(n: u8) -> Uuid {
    Uuid::from_u128(0xc000 + u128::from(n))
}

fn arb_requests() -> impl Strategy<Value = Vec<Request>> {
    // Request ids come from a small pool so retries (same id) happen often.
    prop::collection::vec((arb_cmd(), prop::option::of(0u8..6), 0u64..1000), 1..80).prop_map(|v| {
        v.into_iter()
            .map(|(cmd, rid, at)| Request { request_id: rid.map(|r| format!("req-{r}")), at_ms: at, cmd })
            .collect()
    })
}

fn check_invariants(r: &Registry) {
    let mut emails = BTreeSet::new();
    for a in r.accounts() {
        assert!(emails.insert(a.email.to_ascii_lowercase()), "email {} given twice", a.email);
        assert_eq!(a.user_name, a.user_id.simple().to_string());
    }
    let mut names = BTreeSet::new();
    let mut domains = BTreeSet::new();
    let mut ports = BTreeSet::new();
    let mut per_user: BTreeMap<(Uuid, bool), u32> = BTreeMap::new();
    for s in r.sockets() {
        assert!(names.insert(s.dnsname.to_ascii_lowercase()), "dnsname {} given twice", s.dnsname);
        assert!(s.dnsname.ends_with(".localhost"));
        if let Some(d) = &s.custom_domain {
            assert!(domains.insert(d.name.clone()), "custom domain {} claimed twice", d.name);
            assert_eq!(r.socket_by_host(&d.name).map(|x| x.socket_id), d.verified.then_some(s.socket_id));
        }
        assert!(r.account(&s.user_id).is_some(), "socket without account");
        match (s.socket_type.needs_port(), s.port) {
            (true, Some(p)) => {
                assert!((PORT_MIN..=PORT_MAX).contains(&p), "port {p} outside the range");
                assert!(ports.insert(p), "port {p} given twice");
            }
            (false, None) => {}
            other => panic!("socket type and port disagree: {other:?}"),
        }
        *per_user.entry((s.user_id, s.socket_type.needs_port())).or_default() += 1;
    }
    for ((_, tcp), n) in per_user {
        assert!(n <= if tcp { limits().max_tcp } else { limits().max_http }, "limit exceeded");
    }
    let mut relay = BTreeSet::new();
    for t in r.tunnels() {
        let s = r.socket(&t.socket_id).expect("tunnel of a deleted socket");
        assert_eq!(s.user_id, t.user_id, "tunnel and socket belong to different accounts");
        assert!(relay.insert((t.user_id, t.local_port)), "relay port given twice in one account");
        assert_eq!(r.tunnel_by_relay_port(&t.user_id, t.local_port).map(|x| x.tunnel_id), Some(t.tunnel_id));
    }
    for s in r.sessions() {
        assert!(r.tunnel(&s.tunnel_id).is_some(), "session of a deleted tunnel");
        assert_eq!(r.last_epoch(&s.tunnel_id), s.epoch);
        assert!(!r.is_retired(s.node_id), "a retired node holds a session");
    }
}

fn run(reqs: &[Request]) -> (Registry, Vec<Response>) {
    let mut r = Registry::default();
    let mut d = Dirty::new();
    r.apply(&bootstrap(), &mut d);
    let out = reqs.iter().map(|q| r.apply(q, &mut d)).collect();
    (r, out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn same_commands_same_state(reqs in arb_requests()) {
        let (a, ra) = run(&reqs);
        let (b, rb) = run(&reqs);
        prop_assert_eq!(a.digest(), b.digest());
        prop_assert_eq!(ra, rb);
        // Persisted rows reload into an identical registry, indexes included.
        let rows = a.rows();
        let c = Registry::from_rows(rows.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        prop_assert_eq!(c.digest(), a.digest());
        prop_assert_eq!(&c, &a);
    }

    #[test]
    fn a_batch_is_its_requests_one_by_one(reqs in arb_requests(), cuts in prop::collection::vec(1usize..12, 1..20)) {
        let (one_by_one, answers) = run(&reqs);
        // The same requests grouped into batches of random sizes (group commit).
        let mut batches = Vec::new();
        let mut rest = &reqs[..];
        for c in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (head, tail) = rest.split_at((*c).min(rest.len()));
            batches.push(Request { request_id: None, at_ms: 5000, cmd: Command::Batch(head.to_vec()) });
            rest = tail;
        }
        let mut r = Registry::default();
        let mut dirty = Dirty::new();
        r.apply(&bootstrap(), &mut dirty);
        let mut batched = Vec::new();
        for b in &batches {
            match r.apply(b, &mut dirty) {
                Response::Batch(list) => batched.extend(list),
                other => prop_assert!(false, "a batch answered {:?}", other),
            }
        }
        prop_assert_eq!(&batched, &answers);
        prop_assert_eq!(r.digest(), one_by_one.digest());
        // Every row a batch touched is reported dirty: persisting only those rows reproduces it.
        let persisted: Vec<(String, String)> = dirty.iter().filter_map(|k| Some((k.encode(), r.row(k)?))).collect();
        let reloaded = Registry::from_rows(persisted.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        prop_assert_eq!(reloaded.digest(), r.digest());
    }

    #[test]
    fn uniqueness_holds_and_rejections_change_nothing(reqs in arb_requests()) {
        let mut r = Registry::default();
        let mut d = Dirty::new();
        r.apply(&bootstrap(), &mut d);
        let mut epochs: BTreeMap<Uuid, u64> = BTreeMap::new();
        let mut answered: BTreeMap<String, Response> = BTreeMap::new();
        for q in &reqs {
            let before = r.digest();
            let mut dirty = Dirty::new();
            let resp = r.apply(q, &mut dirty);
            check_invariants(&r);
            if let Some(id) = &q.request_id {
                if let Some(first) = answered.get(id) {
                    prop_assert_eq!(first, &resp, "a retried request got a different answer");
                    prop_assert_eq!(before, r.digest(), "a retried request changed state");
                    continue;
                }
                if !matches!(resp, Response::Rejected(_)) {
                    answered.insert(id.clone(), resp.clone());
                }
            }
            match &resp {
                Response::Rejected(_) => {
                    prop_assert_eq!(&before, &r.digest(), "rejected command {:?} changed state", q.cmd);
                }
                Response::Claimed { session, .. } => {
                    let prev = epochs.insert(session.tunnel_id, session.epoch).unwrap_or(0);
                    prop_assert!(session.epoch > prev, "epoch {} after {}", session.epoch, prev);
                }
                _ => {}
            }
            // A deleted tunnel's epochs go with it; a tunnel recreated with the same id starts over.
            epochs.retain(|t, _| r.tunnel(t).is_some());
            // Every touched row is reported dirty: the persisted form matches memory.
            for k in &dirty {
                let _ = r.row(k);
            }
        }
    }
}

#[test]
fn deleting_a_socket_frees_name_port_and_tunnels() {
    let mut r = Registry::default();
    let mut d = Dirty::new();
    r.apply(&bootstrap(), &mut d);
    let acct = Command::CreateAccount {
        user_id: uid(1),
        name: "n".into(),
        email: "a@x.io".into(),
        password_hash: "h".into(),
        sshkey: "k".into(),
        max_accounts: None,
    };
    r.apply(&Request { request_id: None, at_ms: 1, cmd: acct }, &mut d);
    let mk = |n: u8| Command::CreateSocket {
        user_id: uid(1),
        socket: NewSocket {
            socket_id: sid(n),
            name: "s".into(),
            socket_type: SocketType::Tcp,
            dnsname_hint: "brave-otter-0001".into(),
            port_hint: PORT_MIN,
            label_chosen: false,
            port_chosen: false,
            custom_domain: None,
            access: Access::default(),
        },
        limits: limits(),
        first_tunnel: Some(NewTunnel { tunnel_id: tid(n), local_port_hint: 10_000 }),
    };
    let Response::Socket(first) = r.apply(&Request { request_id: None, at_ms: 2, cmd: mk(1) }, &mut d) else {
        panic!("socket not created")
    };
    assert_eq!(first.socket.dnsname, "brave-otter-0001.localhost");
    assert_eq!(first.socket.port, Some(PORT_MIN));
    let Response::Socket(second) = r.apply(&Request { request_id: None, at_ms: 3, cmd: mk(2) }, &mut d) else {
        panic!("second socket not created")
    };
    assert_eq!(second.socket.dnsname, "brave-otter-0002.localhost", "the next free name");
    assert_eq!(second.socket.port, Some(PORT_MIN + 1), "the next free port");
    assert_ne!(second.tunnels[0].local_port, first.tunnels[0].local_port);

    let del = Command::DeleteSocket { user_id: uid(1), socket_id: sid(1) };
    // No tunnel of the socket was connected: no session ends with it.
    assert_eq!(r.apply(&Request { request_id: None, at_ms: 4, cmd: del }, &mut d), Response::Deleted(vec![]));
    assert!(r.tunnel(&tid(1)).is_none());
    assert!(r.socket_by_port(PORT_MIN).is_none());
    assert!(r.socket_by_dnsname("brave-otter-0001.localhost").is_none());
    let del = Command::DeleteSocket { user_id: uid(1), socket_id: sid(1) };
    assert!(matches!(
        r.apply(&Request { request_id: None, at_ms: 5, cmd: del }, &mut d),
        Response::Rejected(Rejection::NotFound(_))
    ));
}

#[test]
fn newest_claim_wins_and_only_the_holder_releases() {
    let mut r = Registry::default();
    let mut d = Dirty::new();
    let q = |cmd| Request { request_id: None, at_ms: 0, cmd };
    r.apply(&bootstrap(), &mut d);
    r.apply(
        &q(Command::CreateAccount {
            user_id: uid(1),
            name: "n".into(),
            email: "a@x.io".into(),
            password_hash: "h".into(),
            sshkey: "k".into(),
            max_accounts: None,
        }),
        &mut d,
    );
    r.apply(
        &q(Command::CreateSocket {
            user_id: uid(1),
            socket: NewSocket {
                socket_id: sid(1),
                name: "s".into(),
                socket_type: SocketType::Http,
                dnsname_hint: "a-b-0000".into(),
                port_hint: 0,
                label_chosen: false,
                port_chosen: false,
                custom_domain: None,
                access: Access::default(),
            },
            limits: limits(),
            first_tunnel: Some(NewTunnel { tunnel_id: tid(1), local_port_hint: 0 }),
        }),
        &mut d,
    );
    let claim = |n| q(Command::ClaimTunnel { user_id: uid(1), tunnel_id: tid(1), node_id: n });
    let Response::Claimed { session: s1, superseded: None } = r.apply(&claim(1), &mut d) else { panic!() };
    let Response::Claimed { session: s2, superseded: Some(old) } = r.apply(&claim(2), &mut d) else { panic!() };
    assert_eq!(old, s1);
    assert!(s2.epoch > s1.epoch);
    // The superseded holder cannot release the newer session.
    let rel = |n, e| q(Command::ReleaseTunnel { tunnel_id: tid(1), node_id: n, epoch: e });
    assert!(matches!(r.apply(&rel(1, s1.epoch), &mut d), Response::Rejected(Rejection::Stale(_))));
    assert_eq!(r.session(&tid(1)), Some(&s2));
    assert!(matches!(r.apply(&rel(2, s2.epoch), &mut d), Response::Released(_)));
    assert!(r.session(&tid(1)).is_none());
    // Epochs keep growing after a release.
    let Response::Claimed { session: s3, .. } = r.apply(&claim(1), &mut d) else { panic!() };
    assert!(s3.epoch > s2.epoch);
    // Another account cannot claim it.
    let foreign = q(Command::ClaimTunnel { user_id: uid(2), tunnel_id: tid(1), node_id: 1 });
    assert!(matches!(r.apply(&foreign, &mut d), Response::Rejected(Rejection::NotFound(_))));
    // A node marked dead loses its sessions.
    r.apply(
        &q(Command::RegisterNode(NodeRecord {
            node_id: 1,
            raft_addr: String::new(),
            api_addr: String::new(),
            ssh_addr: String::new(),
            http_addr: String::new(),
            https_addr: String::new(),
            public_ips: Vec::new(),
            alive: true,
            changed_at_ms: 0,
        })),
        &mut d,
    );
    let Response::Released(v) = r.apply(&q(Command::SetNodeAlive { node_id: 1, alive: false }), &mut d) else {
        panic!()
    };
    assert_eq!(v.len(), 1);
    assert!(r.session(&tid(1)).is_none());
}

#[test]
fn the_account_cap_holds_and_an_operator_token_is_given_once() {
    let mut r = Registry::default();
    let mut d = Dirty::new();
    let q = |cmd| Request { request_id: None, at_ms: 0, cmd };
    let token = |hash: &str| q(Command::SetOperatorToken { hash: hash.into() });
    assert!(matches!(r.apply(&token("h1"), &mut d), Response::Rejected(Rejection::Invalid(_))), "no config yet");
    r.apply(&bootstrap(), &mut d);
    assert_eq!(r.apply(&token("h1"), &mut d), Response::Done, "a cluster without a token gets one");
    assert!(matches!(r.apply(&token("h2"), &mut d), Response::Rejected(Rejection::Conflict(_))));
    assert_eq!(r.config().unwrap().operator_token_hash, "h1", "and keeps it");

    let acct = |n: u8| {
        q(Command::CreateAccount {
            user_id: uid(n),
            name: "n".into(),
            email: format!("{n}@x.io"),
            password_hash: "h".into(),
            sshkey: "k".into(),
            max_accounts: Some(2),
        })
    };
    assert!(matches!(r.apply(&acct(1), &mut d), Response::Account(_)));
    assert!(matches!(r.apply(&acct(2), &mut d), Response::Account(_)));
    assert!(matches!(r.apply(&acct(3), &mut d), Response::Rejected(Rejection::Limit(_))));
    assert!(r.account(&uid(3)).is_none());
}

#[test]
fn a_chosen_name_or_port_is_taken_exactly_or_refused_changing_nothing() {
    let mut r = Registry::default();
    let mut d = Dirty::new();
    let q = |cmd| Request { request_id: None, at_ms: 0, cmd };
    r.apply(&bootstrap(), &mut d);
    for u in [1, 2] {
        r.apply(
            &q(Command::CreateAccount {
                user_id: uid(u),
                name: "n".into(),
                email: format!("{u}@x.io"),
                password_hash: "h".into(),
                sshkey: "k".into(),
                max_accounts: None,
            }),
            &mut d,
        );
    }
    let mk = |u: u8, s: u8, t: SocketType, label: &str, port: Option<u16>| {
        q(Command::CreateSocket {
            user_id: uid(u),
            socket: NewSocket {
                socket_id: sid(s),
                name: "s".into(),
                socket_type: t,
                dnsname_hint: label.into(),
                port_hint: port.unwrap_or(PORT_MIN),
                label_chosen: true,
                port_chosen: port.is_some(),
                custom_domain: None,
                access: Access::default(),
            },
            limits: limits(),
            first_tunnel: None,
        })
    };
    let Response::Socket(demo) = r.apply(&mk(1, 1, SocketType::Http, "Demo", None), &mut d) else { panic!() };
    assert_eq!(demo.socket.dnsname, "demo.localhost", "the label as chosen, in lower case");
    let Response::Socket(db) = r.apply(&mk(1, 2, SocketType::Tcp, "db", Some(PORT_MAX)), &mut d) else { panic!() };
    assert_eq!(db.socket.port, Some(PORT_MAX));

    let before = r.digest();
    let refused = [
        (mk(2, 3, SocketType::Http, "demo", None), "the name demo.localhost is taken"),
        (mk(2, 3, SocketType::Tls, "other", Some(PORT_MAX)), "port 20003 is taken"),
        (mk(2, 3, SocketType::Tcp, "other", Some(PORT_MAX + 1)), "outside the cluster's range"),
    ];
    for (cmd, why) in refused {
        match r.apply(&cmd, &mut d) {
            Response::Rejected(rej) => assert!(rej.to_string().contains(why), "{rej} for {why}"),
            other => panic!("{why}: {other:?}"),
        }
    }
    assert_eq!(r.digest(), before, "a refused claim changes nothing");

    // Deleting the socket frees the name for anyone.
    r.apply(&q(Command::DeleteSocket { user_id: uid(1), socket_id: sid(1) }), &mut d);
    let Response::Socket(again) = r.apply(&mk(2, 3, SocketType::Http, "demo", None), &mut d) else { panic!() };
    assert_eq!((again.socket.dnsname.as_str(), again.socket.user_id), ("demo.localhost", uid(2)));
}

/// An account's credentials: an API key's name is unique among its keys, at most
/// MAX_API_KEYS_PER_ACCOUNT keys (refused past it, changing nothing), at most
/// MAX_TOKENS_PER_ACCOUNT tokens (the oldest dropped), expired ones dropped at the next issue,
/// and only the owner revokes.
#[test]
fn credentials_are_capped_pruned_and_revoked_only_by_their_owner() {
    let mut r = Registry::default();
    let mut d = Dirty::new();
    r.apply(&bootstrap(), &mut d);
    let at = |at_ms, cmd| Request { request_id: None, at_ms, cmd };
    for u in [1, 2] {
        let acct = Command::CreateAccount {
            user_id: uid(u),
            name: "n".into(),
            email: format!("{u}@x.io"),
            password_hash: "h".into(),
            sshkey: "k".into(),
            max_accounts: None,
        };
        r.apply(&at(0, acct), &mut d);
    }
    let cred = |n: u128, kind, name: &str, expires: Option<u64>| {
        Command::IssueCredential(Credential {
            id: Uuid::from_u128(n),
            user_id: uid(1),
            kind,
            name: name.into(),
            created_at_ms: 0,
            expires_at_ms: expires,
            secret_hash: None,
        })
    };
    // Keys: a name once; the cap refuses, changing nothing — not even dropping expired ones.
    assert!(matches!(r.apply(&at(1, cred(1, CredentialKind::ApiKey, "ci", None)), &mut d), Response::Credential(_)));
    assert!(matches!(
        r.apply(&at(1, cred(3, CredentialKind::ApiKey, "old", Some(5))), &mut d),
        Response::Credential(_)
    ));
    let digest = r.digest();
    let taken = r.apply(&at(9, cred(4, CredentialKind::ApiKey, "ci", None)), &mut d);
    assert!(matches!(taken, Response::Rejected(Rejection::Conflict(_))), "{taken:?}");
    assert_eq!(r.digest(), digest, "a refused issue dropped the expired key");
    r.apply(&at(9, Command::RevokeCredential { user_id: uid(1), id: Uuid::from_u128(3) }), &mut d);
    let again = r.apply(&at(2, cred(2, CredentialKind::ApiKey, "ci", None)), &mut d);
    assert!(matches!(again, Response::Rejected(Rejection::Conflict(_))), "{again:?}");
    for i in 1..MAX_API_KEYS_PER_ACCOUNT as u128 {
        let name = format!("k{i}");
        assert!(matches!(
            r.apply(&at(3, cred(100 + i, CredentialKind::ApiKey, &name, None)), &mut d),
            Response::Credential(_)
        ));
    }
    let digest = r.digest();
    let over = r.apply(&at(4, cred(999, CredentialKind::ApiKey, "one-more", None)), &mut d);
    assert!(matches!(over, Response::Rejected(Rejection::Limit(_))), "{over:?}");
    assert_eq!(r.digest(), digest);
    // Tokens: past the cap the oldest goes; expired ones go at the next issue.
    for i in 0..MAX_TOKENS_PER_ACCOUNT as u128 {
        r.apply(&at(10 + i as u64, cred(1000 + i, CredentialKind::Token, "login", Some(1_000_000))), &mut d);
    }
    r.apply(&at(500, cred(5000, CredentialKind::Token, "login", Some(1_000_000))), &mut d);
    assert!(r.credential(&Uuid::from_u128(1000)).is_none(), "the oldest token was dropped");
    assert!(r.credential(&Uuid::from_u128(1001)).is_some());
    let tokens = |r: &Registry| r.credentials_of(&uid(1)).iter().filter(|c| c.kind == CredentialKind::Token).count();
    assert_eq!(tokens(&r), MAX_TOKENS_PER_ACCOUNT);
    r.apply(&at(2_000_000, cred(6000, CredentialKind::Token, "login", Some(3_000_000))), &mut d);
    assert_eq!(tokens(&r), 1, "expired tokens were dropped");
    // Only the owner revokes; a revoked id is gone.
    let theirs = r.apply(&at(5, Command::RevokeCredential { user_id: uid(2), id: Uuid::from_u128(1) }), &mut d);
    assert!(matches!(theirs, Response::Rejected(Rejection::NotFound(_))));
    assert_eq!(
        r.apply(&at(5, Command::RevokeCredential { user_id: uid(1), id: Uuid::from_u128(1) }), &mut d),
        Response::Done
    );
    assert!(r.credential(&Uuid::from_u128(1)).is_none());
    // No account, no credential.
    let nobody = Command::IssueCredential(Credential {
        id: Uuid::from_u128(7),
        user_id: uid(3),
        kind: CredentialKind::Token,
        name: "login".into(),
        created_at_ms: 0,
        expires_at_ms: None,
        secret_hash: None,
    });
    assert!(matches!(r.apply(&at(6, nobody), &mut d), Response::Rejected(Rejection::NotFound(_))));
}
