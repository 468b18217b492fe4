//! What every command starts from: the API clients for the cluster, built once from the global
//! flags and what `login` kept, and the output format.

use mysocket_api::ApiClient;

use crate::cli::Cli;
use crate::failure::fail;
use crate::failure::Failure;
use crate::output::Output;
use crate::store;

pub struct Context {
    /// The API without a token: the given URLs, then the nodes remembered for them.
    anon: ApiClient,
    /// The API URL(s) as given, the key the remembered nodes are kept under.
    given: Vec<String>,
    /// The CA trusted for an HTTPS API (`--cacert`, or the one login kept), kept again with the
    /// nodes.
    ca_pem: Option<String>,
    /// MYSOCKET_OPERATOR_TOKEN or the content of `--operator-token-file`, if either is given.
    operator_token: Option<String>,
    pub output: Output,
}

impl Context {
    /// Fails, before any command runs, on a `--cacert` or operator token file it cannot use.
    pub fn new(cli: &Cli) -> Result<Context, Failure> {
        let anon = ApiClient::new(cli.api_url.clone());
        let given = anon.urls().to_vec();
        let known = store::known_nodes(&given);
        // The CA to trust for an HTTPS API: the one given now, else the one login was given.
        let ca_pem = match &cli.cacert {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| fail(2, format!("cannot read --cacert {}: {e}", p.display())))?,
            ),
            None => known.as_ref().and_then(|k| k.ca_pem.clone()),
        };
        let anon = match &ca_pem {
            Some(pem) => anon.with_ca_pem(pem.as_bytes()).map_err(|e| fail(2, format!("--cacert: {e}")))?,
            None => anon,
        };
        let anon = anon.with_fallbacks(known.map(|k| k.nodes).unwrap_or_default());
        let operator_token = operator_token(cli.operator_token_file.as_ref())?;
        Ok(Context { anon, given, ca_pem, operator_token, output: Output::from_flag(&cli.output) })
    }

    /// The API without a token (sign-up, login) or with one the command reads itself.
    pub fn anon(&self) -> &ApiClient {
        &self.anon
    }

    /// The API as the logged-in user.
    pub fn authed(&self) -> Result<ApiClient, Failure> {
        Ok(self.anon.clone().with_token(store::read_token()?))
    }

    /// For calls an operator may make: with the operator token if there is one.
    pub fn maybe_operator(&self) -> ApiClient {
        match &self.operator_token {
            Some(t) => self.anon.clone().with_token(t.clone()),
            None => self.anon.clone(),
        }
    }

    /// For calls only an operator may make.
    pub fn operator(&self) -> Result<ApiClient, Failure> {
        let token = self.operator_token.clone().ok_or_else(|| {
            fail(3, "this command needs the operator token: --operator-token-file FILE or MYSOCKET_OPERATOR_TOKEN")
        })?;
        Ok(self.maybe_operator().with_token(token))
    }

    /// Keeps the cluster's nodes for later commands given the same API URL(s).
    pub fn remember_nodes(&self, view: &mysocket_api::ClusterView) {
        store::remember_nodes(&self.given, self.ca_pem.clone(), view);
    }
}

/// The operator token: MYSOCKET_OPERATOR_TOKEN, else the file `--operator-token-file` names.
fn operator_token(file: Option<&std::path::PathBuf>) -> Result<Option<String>, Failure> {
    if let Some(t) = std::env::var("MYSOCKET_OPERATOR_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
        return Ok(Some(t.trim().to_string()));
    }
    match file {
        None => Ok(None),
        Some(p) => std::fs::read_to_string(p)
            .map(|t| Some(t.trim().to_string()))
            .map_err(|e| fail(2, format!("cannot read the operator token file {}: {e}", p.display()))),
    }
}
