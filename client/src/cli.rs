//! The command line: every command and flag of the original mysocket.io client, underscore
//! spellings such as `--socket_id` too. Doc comments here are the `--help` text.

use std::path::PathBuf;

use clap::Parser;
use clap::Subcommand;
use mysocket_api::SocketCreate;

#[derive(Parser, Debug)]
#[command(name = "mysocketctl", version, about = "Client for a mysocket cluster: accounts, sockets and tunnels")]
pub struct Cli {
    /// API URL(s) of the cluster, comma separated; the next is tried when one is down, then
    /// the other nodes seen at login or when a tunnel last started.
    #[arg(
        long = "api-url",
        alias = "api_url",
        env = "MYSOCKET_API",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub api_url: Vec<String>,
    /// PEM file of the CA that signed the API's certificate (for `https://` API URLs), e.g. the
    /// cluster CA from a node's DATA_DIR/ca.pem; `login` keeps it for later commands to the
    /// same URLs. Without it, the system's roots.
    #[arg(long, env = "MYSOCKET_CACERT", global = true)]
    pub cacert: Option<PathBuf>,
    /// File holding the cluster's operator token, for `cluster add|remove`, the detail of
    /// `cluster status`, and `account create` on a cluster whose sign-up is closed. The token
    /// itself may come from MYSOCKET_OPERATOR_TOKEN instead.
    #[arg(long = "operator-token-file", env = "MYSOCKET_OPERATOR_TOKEN_FILE", global = true)]
    pub operator_token_file: Option<PathBuf>,
    /// `table` (default) or `json` for scripts.
    #[arg(long, short = 'o', value_parser = ["table", "json"], default_value = "table", global = true)]
    pub output: String,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create or show your account.
    Account {
        #[command(subcommand)]
        cmd: AccountCmd,
    },
    /// Log in and store the token in ~/.mysocketio_token (the cluster's nodes beside it, in
    /// ~/.mysocketio_token.nodes).
    ///
    /// Example: mysocketctl login --email ada@example.com
    Login {
        #[arg(long, short = 'e')]
        email: Option<String>,
        #[arg(long, short = 'p')]
        password: Option<String>,
    },
    /// Manage sockets (public endpoints).
    Socket {
        #[command(subcommand)]
        cmd: SocketCmd,
    },
    /// Manage a socket's tunnels.
    Tunnel {
        #[command(subcommand)]
        cmd: TunnelCmd,
    },
    /// Serve a local port through a socket until Ctrl-C. With --name or --subdomain, the
    /// account's socket of that name is reused and kept, so the URL stays the same every run;
    /// otherwise (or with --temporary) a new socket is made and deleted again on exit.
    ///
    /// Example: mysocketctl connect --port 3000 --name demo --subdomain demo
    Connect {
        /// The local port to publish.
        #[arg(long)]
        port: u16,
        #[command(flatten)]
        spec: SocketSpec,
        /// A new socket for this run only, deleted on exit (the original client's behaviour),
        /// even with --name.
        #[arg(long)]
        temporary: bool,
        /// Where the local service listens.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// SSH private key; default ~/.ssh/id_ed25519, id_ecdsa or id_rsa.
        #[arg(long, short = 'i')]
        identity: Option<PathBuf>,
        /// Where the request inspector listens (http and https sockets), or `false` for none.
        #[arg(long, default_value = crate::inspect::web::DEFAULT)]
        inspect: String,
    },
    /// Inspect and change the cluster's membership (operators).
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// Run every tunnel of a config file in one process, until stopped; SIGHUP or
    /// `mysocketctl reload` applies the file's changes without dropping the tunnels that stay.
    ///
    /// Example: mysocketctl start --config ~/.config/mysocket/mysocket.toml
    Start {
        /// The config file [default: $XDG_CONFIG_HOME/mysocket/mysocket.toml or
        /// ~/.config/mysocket/mysocket.toml].
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        /// Where the request inspector listens, or `false`; overrides the file's `inspect`.
        #[arg(long)]
        inspect: Option<String>,
    },
    /// Check a config file, then have the `start` running it apply it again.
    ///
    /// Example: mysocketctl reload --config mysocket.toml
    Reload {
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
    /// Config files of `start`.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Print a completion script for your shell.
    ///
    /// Example: mysocketctl completion bash > /etc/bash_completion.d/mysocketctl
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// API keys for scripts and CI: made once, shown once, used as MYSOCKET_API_KEY.
    Apikey {
        #[command(subcommand)]
        cmd: ApikeyCmd,
    },
    /// Your login tokens (one per login): list them, revoke one you no longer trust.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Check a config file: every mistake is named with its line; nothing is changed.
    ///
    /// Example: mysocketctl config check --config mysocket.toml
    Check {
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
}

/// Whose credentials: yours, or with the operator credential any account's.
#[derive(clap::Args, Debug)]
pub struct Whose {
    /// Operators: the account (email or user id) whose credentials these are.
    #[arg(long)]
    pub account: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ApikeyCmd {
    /// Make an API key; it is printed once and never shown again.
    ///
    /// Example: MYSOCKET_API_KEY=$(mysocketctl apikey create --name ci -o json | jq -r .key)
    Create {
        /// A name to know it by (letters, digits, '-', '_', '.'), unique among your keys.
        #[arg(long, short = 'n')]
        name: String,
        /// Days until it stops working; default: until revoked.
        #[arg(long = "expires-in-days", alias = "expires_in_days")]
        expires_in_days: Option<u32>,
    },
    /// List API keys (never their secrets).
    ///
    /// Example: mysocketctl apikey ls
    Ls {
        #[command(flatten)]
        whose: Whose,
    },
    /// Revoke an API key: every node refuses it from then on.
    ///
    /// Example: mysocketctl apikey revoke --id 6f1c...
    Revoke {
        /// The key's id, from `apikey ls`.
        #[arg(long)]
        id: String,
        #[command(flatten)]
        whose: Whose,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// List login tokens; the one this command used is marked.
    ///
    /// Example: mysocketctl token ls
    Ls {
        #[command(flatten)]
        whose: Whose,
    },
    /// Revoke a login token: every node refuses it from then on.
    ///
    /// Example: mysocketctl token revoke --id 2b9e...
    Revoke {
        /// The token's id, from `token ls`.
        #[arg(long)]
        id: String,
        #[command(flatten)]
        whose: Whose,
    },
}

#[derive(Subcommand, Debug)]
pub enum AccountCmd {
    /// Create an account.
    ///
    /// Example: mysocketctl account create --name Ada --email ada@example.com
    Create {
        #[arg(long, short = 'n')]
        name: String,
        #[arg(long, short = 'e')]
        email: String,
        #[arg(long, short = 'p')]
        password: Option<String>,
        /// OpenSSH public key, as text or a path; default ~/.ssh/id_ed25519.pub, id_ecdsa.pub or id_rsa.pub.
        #[arg(long, short = 's')]
        sshkey: Option<String>,
    },
    /// Show the logged-in account.
    ///
    /// Example: mysocketctl account show
    Show,
}

#[derive(clap::Args, Debug)]
pub struct SocketSpec {
    /// The socket's name, shown by `socket ls` and in the tunnel's banner [default: mysocketctl].
    #[arg(long, short = 'n')]
    pub name: Option<String>,
    /// The first label of the public name (`demo` gives demo.<domain>), unique in the
    /// cluster; default: a random one.
    #[arg(long)]
    pub subdomain: Option<String>,
    /// tcp and tls sockets: the public port, from the cluster's range; default: a free one.
    #[arg(long = "public-port", alias = "public_port")]
    pub public_port: Option<u16>,
    /// A domain of yours (app.example.com) the socket answers to once you prove control of it:
    /// the command prints the DNS record to set.
    #[arg(long)]
    pub domain: Option<String>,
    /// http, https, tcp or tls.
    #[arg(long = "type", short = 't', default_value = "http")]
    pub socket_type: String,
    /// Require HTTP basic auth (username and password).
    #[arg(long, short = 'P', requires_all = ["username", "password"])]
    pub protected: bool,
    /// The username visitors give (with --protected).
    #[arg(long, short = 'u', requires = "protected")]
    pub username: Option<String>,
    /// The password visitors give (with --protected).
    #[arg(long, short = 'p', requires = "protected")]
    pub password: Option<String>,
    /// Visitors log in with an identity provider first (the original client's option); sent
    /// as asked, so a cluster that cannot enforce it refuses the socket.
    #[arg(long)]
    pub cloudauth: bool,
    /// Emails allowed through cloud authentication, comma separated.
    #[arg(long = "allowed_email_addresses", alias = "allowed-email-addresses", value_delimiter = ',')]
    pub allowed_email_addresses: Vec<String>,
    /// Email domains allowed through cloud authentication, comma separated.
    #[arg(long = "allowed_email_domains", alias = "allowed-email-domains", value_delimiter = ',')]
    pub allowed_email_domains: Vec<String>,
    #[command(flatten)]
    pub visitors: VisitorRules,
    #[command(flatten)]
    pub upstream: UpstreamOptions,
}

/// How visitors' connections reach the service.
#[derive(clap::Args, Debug, Default)]
pub struct UpstreamOptions {
    /// tcp and tls sockets: `v1` or `v2` writes a PROXY protocol header with the visitor's
    /// address before the first byte (for HAProxy, nginx `proxy_protocol`, ...). http and
    /// https services get the address in X-Forwarded-For.
    #[arg(long = "proxy-protocol", alias = "proxy_protocol", value_parser = ["v1", "v2", "off"])]
    pub proxy_protocol: Option<String>,
    /// http and https sockets: `h2c` speaks HTTP/2 without TLS to the service (gRPC);
    /// default `http1`.
    #[arg(long = "upstream-protocol", alias = "upstream_protocol", value_parser = ["http1", "h2c"])]
    pub upstream_protocol: Option<String>,
}

/// Rules on visitors' addresses, for every socket type.
#[derive(clap::Args, Debug)]
pub struct VisitorRules {
    /// Only these visitor addresses get in: networks in CIDR form or single addresses, comma
    /// separated (IPv4 and IPv6).
    #[arg(long = "ip-allow", alias = "ip_allow", value_delimiter = ',')]
    pub ip_allow: Vec<String>,
    /// These visitor addresses are refused (CIDR or single addresses, comma separated).
    #[arg(long = "ip-deny", alias = "ip_deny", value_delimiter = ',')]
    pub ip_deny: Vec<String>,
    /// Requests (http, https) or new connections (tcp, tls) per second per visitor address;
    /// 0: no limit.
    #[arg(long = "rate-limit", alias = "rate_limit")]
    pub rate_limit: Option<u32>,
}

/// `socket update`: each rule given replaces the socket's; the others stay.
#[derive(clap::Args, Debug)]
pub struct SocketChange {
    #[arg(long = "socket_id", alias = "socket-id", short = 's')]
    pub socket_id: String,
    /// Require HTTP basic auth (true or false).
    #[arg(long)]
    pub protected: Option<bool>,
    #[arg(long, short = 'u')]
    pub username: Option<String>,
    #[arg(long, short = 'p')]
    pub password: Option<String>,
    /// Cloud authentication on or off (true or false).
    #[arg(long)]
    pub cloudauth: Option<bool>,
    /// Replaces the allowed emails (comma separated; an empty value clears them).
    #[arg(long = "allowed_email_addresses", alias = "allowed-email-addresses", value_delimiter = ',', num_args = 0..)]
    pub allowed_email_addresses: Option<Vec<String>>,
    /// Replaces the allowed email domains (comma separated; an empty value clears them).
    #[arg(long = "allowed_email_domains", alias = "allowed-email-domains", value_delimiter = ',', num_args = 0..)]
    pub allowed_email_domains: Option<Vec<String>>,
    /// Replaces the allowed visitor networks (comma separated; an empty value clears them).
    #[arg(long = "ip-allow", alias = "ip_allow", value_delimiter = ',', num_args = 0..)]
    pub ip_allow: Option<Vec<String>>,
    /// Replaces the refused visitor networks (comma separated; an empty value clears them).
    #[arg(long = "ip-deny", alias = "ip_deny", value_delimiter = ',', num_args = 0..)]
    pub ip_deny: Option<Vec<String>>,
    /// Requests or new connections per second per visitor address; 0: no limit.
    #[arg(long = "rate-limit", alias = "rate_limit")]
    pub rate_limit: Option<u32>,
    /// A custom domain to claim instead of the socket's current one ('' gives it up).
    #[arg(long)]
    pub domain: Option<String>,
    #[command(flatten)]
    pub upstream: UpstreamOptions,
}

/// An empty value given to a list flag (`--ip-allow ''`) clears the list.
fn cleared(list: Option<Vec<String>>) -> Option<Vec<String>> {
    list.map(|l| l.into_iter().filter(|v| !v.trim().is_empty()).collect())
}

impl From<SocketChange> for mysocket_api::SocketUpdate {
    fn from(c: SocketChange) -> mysocket_api::SocketUpdate {
        mysocket_api::SocketUpdate {
            protected_socket: c.protected,
            protected_username: c.username,
            protected_password: c.password,
            cloud_authentication_enabled: c.cloudauth,
            cloud_authentication_email_allowed_addressses: cleared(c.allowed_email_addresses),
            cloud_authentication_email_allowed_domains: cleared(c.allowed_email_domains),
            ip_allow: cleared(c.ip_allow),
            ip_deny: cleared(c.ip_deny),
            rate_limit: c.rate_limit,
            custom_domain: c.domain,
            proxy_protocol: c.upstream.proxy_protocol,
            upstream_protocol: c.upstream.upstream_protocol,
        }
    }
}

impl From<SocketSpec> for SocketCreate {
    fn from(s: SocketSpec) -> SocketCreate {
        SocketCreate {
            name: s.name.unwrap_or_else(|| "mysocketctl".to_string()),
            socket_type: Some(s.socket_type),
            protected_socket: s.protected,
            protected_username: s.username,
            protected_password: s.password,
            cloud_authentication_enabled: s.cloudauth,
            cloud_authentication_email_allowed_addressses: s.allowed_email_addresses,
            cloud_authentication_email_allowed_domains: s.allowed_email_domains,
            ip_allow: s.visitors.ip_allow,
            ip_deny: s.visitors.ip_deny,
            rate_limit: s.visitors.rate_limit.unwrap_or(0),
            subdomain: s.subdomain,
            port: s.public_port,
            custom_domain: s.domain,
            proxy_protocol: s.upstream.proxy_protocol,
            upstream_protocol: s.upstream.upstream_protocol,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum SocketCmd {
    /// List your sockets.
    ///
    /// Example: mysocketctl socket ls -o json
    Ls,
    /// Create a socket.
    ///
    /// Example: mysocketctl socket create --name web --type http --subdomain web
    Create(SocketSpec),
    /// Change a socket's access rules (Basic auth, cloud authentication, visitor addresses,
    /// rate limit); every node applies the change within a second, tunnels stay connected.
    ///
    /// Example: mysocketctl socket update --socket_id 6f1c... --ip-allow 203.0.113.0/24 --rate-limit 20
    Update(SocketChange),
    /// Show one socket with its access rules and tunnels.
    ///
    /// Example: mysocketctl socket show --socket_id 6f1c...
    Show {
        #[arg(long = "socket_id", alias = "socket-id", short = 's')]
        socket_id: String,
    },
    /// Delete a socket and its tunnels.
    ///
    /// Example: mysocketctl socket delete --socket_id 6f1c...
    Delete {
        #[arg(long = "socket_id", alias = "socket-id", short = 's')]
        socket_id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TunnelCmd {
    /// List a socket's tunnels.
    ///
    /// Example: mysocketctl tunnel ls --socket_id 6f1c...
    Ls {
        #[arg(long = "socket_id", alias = "socket-id", short = 's')]
        socket_id: String,
    },
    /// Add a tunnel to a socket.
    ///
    /// Example: mysocketctl tunnel create --socket_id 6f1c...
    Create {
        #[arg(long = "socket_id", alias = "socket-id", short = 's')]
        socket_id: String,
    },
    /// Show one tunnel.
    ///
    /// Example: mysocketctl tunnel show --socket_id 6f1c... --tunnel_id 9a7d...
    Show {
        #[arg(long = "socket_id", alias = "socket-id", short = 's')]
        socket_id: String,
        #[arg(long = "tunnel_id", alias = "tunnel-id", short = 't')]
        tunnel_id: String,
    },
    /// Delete a tunnel.
    ///
    /// Example: mysocketctl tunnel delete --socket_id 6f1c... --tunnel_id 9a7d...
    Delete {
        #[arg(long = "socket_id", alias = "socket-id", short = 's')]
        socket_id: String,
        #[arg(long = "tunnel_id", alias = "tunnel-id", short = 't')]
        tunnel_id: String,
    },
    /// Serve a local port through an existing tunnel until stopped.
    ///
    /// Example: mysocketctl tunnel connect --socket_id 6f1c... --tunnel_id 9a7d... --port 3000
    Connect {
        #[arg(long = "socket_id", alias = "socket-id", short = 's')]
        socket_id: String,
        #[arg(long = "tunnel_id", alias = "tunnel-id", short = 't')]
        tunnel_id: String,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, short = 'i')]
        identity: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Leader, term and nodes.
    ///
    /// Example: mysocketctl cluster status --operator-token-file ops-token
    Status,
    /// Add a node (running with --join, or reachable at its raft address).
    ///
    /// Example: mysocketctl cluster add --id 4 --raft-addr 10.0.0.4:7071 --operator-token-file ops-token
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long = "raft-addr", alias = "raft_addr")]
        raft_addr: String,
    },
    /// Remove a node; its id is never reused.
    ///
    /// Example: mysocketctl cluster remove --id 4 --operator-token-file ops-token
    Remove {
        #[arg(long)]
        id: u64,
    },
}
