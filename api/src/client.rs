//! A typed async client for the REST API, with fail-over across several node URLs.

use std::time::Duration;

use reqwest::Method;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::*;

/// The header that makes a change safe to send again (to another node): the cluster applies
/// a change once per key and account, and answers a repeat with the first answer.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status and `{"message": ...}`.
    #[error("{status}: {message}")]
    Api { status: StatusCode, message: String },
    /// No node could be reached.
    #[error("no node answered ({0}); is the cluster running?")]
    Unreachable(String),
    #[error("unexpected answer: {0}")]
    Decode(String),
}

impl ClientError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server answered that what was asked for does not exist (404).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }
}

/// An API base URL: `http://` when no scheme is given, no trailing slash.
fn base_url(u: String) -> String {
    let u = if u.contains("://") { u } else { format!("http://{u}") };
    u.trim_end_matches('/').to_string()
}

/// An error with what caused it (a refused certificate shows only there).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

fn http_client(extra_roots: &[reqwest::Certificate]) -> reqwest::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        // Idle connections are dropped before a node closes them (it gives an idle
        // connection 30 s for its next request), so none is reused as it closes.
        .pool_idle_timeout(Duration::from_secs(20));
    for c in extra_roots {
        b = b.add_root_certificate(c.clone());
    }
    b.build()
}

/// Client for one cluster, given one or more API base URLs. A call that cannot connect to a
/// node moves on to the next; an answer from a node (even an error) is final.
#[derive(Clone, Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    urls: Vec<String>,
    token: Option<String>,
    timeout: Option<Duration>,
}

impl ApiClient {
    pub fn new<I, S>(urls: I) -> ApiClient
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let urls = urls.into_iter().map(|u| base_url(u.into())).collect();
        ApiClient { http: http_client(&[]).expect("http client"), urls, token: None, timeout: None }
    }

    /// Trusts the CA certificates in `pem` (e.g. the cluster CA, for an API served over HTTPS
    /// with a certificate it signed) besides the system's roots.
    pub fn with_ca_pem(mut self, pem: &[u8]) -> Result<ApiClient, ClientError> {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| ClientError::Decode(format!("the CA file is not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(ClientError::Decode("the CA file holds no certificate".into()));
        }
        self.http = http_client(&certs).map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok(self)
    }

    /// Adds more nodes' API addresses (`api_addr` from `GET /cluster`) after the URLs already
    /// known, for calls to fall back on when those cannot be reached; an address without a
    /// scheme gets the first URL's (a cluster whose API speaks HTTPS does so on every node).
    pub fn with_fallbacks<I, S>(mut self, addrs: I) -> ApiClient
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let https = self.urls.first().is_some_and(|u| u.starts_with("https://"));
        for a in addrs {
            let a: String = a.into();
            let u = base_url(if https && !a.contains("://") { format!("https://{a}") } else { a });
            if !self.urls.contains(&u) {
                self.urls.push(u);
            }
        }
        self
    }

    /// How long a call waits for a node's answer before it tries the next (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> ApiClient {
        self.timeout = Some(timeout);
        self
    }

    pub fn with_token(mut self, token: impl Into<String>) -> ApiClient {
        self.token = Some(token.into());
        self
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Sends a request and decodes the JSON answer (or `()` for an empty body). A node that
    /// cannot be reached is skipped for the next; one that took the request and did not
    /// answer in time is too, which is safe because every change carries one
    /// `Idempotency-Key` for all its tries: the cluster applies it once, and a retry gets the
    /// first answer.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut last_err = String::from("no API URL given");
        let key = (method != Method::GET).then(|| uuid::Uuid::new_v4().to_string());
        for base in &self.urls {
            let mut req = self.http.request(method.clone(), format!("{base}{path}"));
            if let Some(t) = self.timeout {
                req = req.timeout(t);
            }
            if let Some(t) = &self.token {
                req = req.header("x-access-token", t);
            }
            if let Some(k) = &key {
                req = req.header(IDEMPOTENCY_KEY, k);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) if e.is_connect() || e.is_timeout() => {
                    last_err = format!("{base}: {}", with_causes(&e));
                    continue;
                }
                Err(e) => return Err(ClientError::Unreachable(format!("{base}: {}", with_causes(&e)))),
            };
            let status = resp.status();
            let bytes = resp.bytes().await.map_err(|e| ClientError::Decode(e.to_string()))?;
            if !status.is_success() {
                let message = serde_json::from_slice::<ErrorBody>(&bytes)
                    .map(|b| b.message)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
                return Err(ClientError::Api { status, message });
            }
            let bytes = if bytes.is_empty() { "null".into() } else { bytes };
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()));
        }
        Err(ClientError::Unreachable(last_err))
    }

    pub async fn cluster(&self) -> Result<ClusterView, ClientError> {
        self.call::<(), _>(Method::GET, "/cluster", None).await
    }

    pub async fn digest(&self) -> Result<DigestView, ClientError> {
        self.call::<(), _>(Method::GET, "/cluster/digest", None).await
    }

    pub async fn add_node(&self, id: u64, raft_addr: &str) -> Result<ClusterView, ClientError> {
        let body = AddNode { id, raft_addr: raft_addr.to_string() };
        self.call(Method::POST, "/cluster/nodes", Some(&body)).await
    }

    pub async fn remove_node(&self, id: u64) -> Result<(), ClientError> {
        self.call::<(), ()>(Method::DELETE, &format!("/cluster/nodes/{id}"), None).await
    }

    pub async fn create_user(&self, u: &UserCreate) -> Result<User, ClientError> {
        self.call(Method::POST, "/user", Some(u)).await
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<TokenReply, ClientError> {
        let body = Login { email: email.to_string(), password: password.to_string() };
        self.call(Method::POST, "/login", Some(&body)).await
    }

    pub async fn get_user(&self, user_id: &str) -> Result<User, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/user/{user_id}"), None).await
    }

    pub async fn refresh(&self) -> Result<TokenReply, ClientError> {
        self.call(Method::POST, "/login/refresh", Some(&serde_json::json!({}))).await
    }

    pub async fn sockets(&self) -> Result<Vec<Socket>, ClientError> {
        self.call::<(), _>(Method::GET, "/socket", None).await
    }

    pub async fn create_socket(&self, s: &SocketCreate) -> Result<Socket, ClientError> {
        self.call(Method::POST, "/socket", Some(s)).await
    }

    /// `POST /connect`: a socket with its first tunnel.
    pub async fn connect(&self, s: &SocketCreate) -> Result<Socket, ClientError> {
        self.call(Method::POST, "/connect", Some(s)).await
    }

    pub async fn socket(&self, socket_id: &str) -> Result<Socket, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/socket/{socket_id}"), None).await
    }

    /// `PATCH /socket/{socket_id}`: changes the socket's access rules.
    pub async fn update_socket(&self, socket_id: &str, u: &SocketUpdate) -> Result<Socket, ClientError> {
        self.call(Method::PATCH, &format!("/socket/{socket_id}"), Some(u)).await
    }

    pub async fn delete_socket(&self, socket_id: &str) -> Result<(), ClientError> {
        self.call::<(), ()>(Method::DELETE, &format!("/socket/{socket_id}"), None).await
    }

    pub async fn tunnels(&self, socket_id: &str) -> Result<Vec<Tunnel>, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/socket/{socket_id}/tunnel"), None).await
    }

    pub async fn create_tunnel(&self, socket_id: &str) -> Result<Tunnel, ClientError> {
        self.call(Method::POST, &format!("/socket/{socket_id}/tunnel"), Some(&serde_json::json!({}))).await
    }

    pub async fn tunnel(&self, socket_id: &str, tunnel_id: &str) -> Result<Tunnel, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/socket/{socket_id}/tunnel/{tunnel_id}"), None).await
    }

    pub async fn delete_tunnel(&self, socket_id: &str, tunnel_id: &str) -> Result<(), ClientError> {
        self.call::<(), ()>(Method::DELETE, &format!("/socket/{socket_id}/tunnel/{tunnel_id}"), None).await
    }

    /// `GET /credentials`: the caller's tokens and API keys, or (an operator) `account`'s.
    pub async fn credentials(&self, account: Option<&str>) -> Result<Vec<CredentialView>, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/credentials{}", account_query(account)), None).await
    }

    /// `POST /apikeys`: a new API key, whose secret this answer alone holds.
    pub async fn create_api_key(&self, k: &ApiKeyCreate) -> Result<ApiKeyCreated, ClientError> {
        self.call(Method::POST, "/apikeys", Some(k)).await
    }

    /// `DELETE /credentials/{id}`: revokes a token or API key of the caller (or, for an
    /// operator, of `account`).
    pub async fn revoke_credential(&self, id: &str, account: Option<&str>) -> Result<(), ClientError> {
        self.call::<(), ()>(Method::DELETE, &format!("/credentials/{id}{}", account_query(account)), None).await
    }
}

/// `?account=<value>`, encoded, or nothing.
fn account_query(account: Option<&str>) -> String {
    match account {
        Some(a) => format!("?account={}", form_urlencoded::byte_serialize(a.as_bytes()).collect::<String>()),
        None => String::new(),
    }
}
