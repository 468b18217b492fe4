//! `GET /openapi.json`: the OpenAPI document, generated from the handlers' annotations and the
//! API crate's types.

use mysocket_api::types::*;
use utoipa::openapi::security::ApiKey;
use utoipa::openapi::security::ApiKeyValue;
use utoipa::openapi::security::SecurityScheme;
use utoipa::Modify;
use utoipa::OpenApi;

struct TokenHeader;

impl Modify for TokenHeader {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        // Every operation may also answer an error the node gives any call — bad input (400),
        // a refused credential (401, 403), a slow or large body (408, 413), a rate limit (429),
        // no leader (503) — always as `{"message"}`.
        let error = utoipa::openapi::ResponseBuilder::new()
            .description("An error: `{\"message\": ...}` saying what to do")
            .content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        for item in openapi.paths.paths.values_mut() {
            let ops = [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch];
            for op in ops.into_iter().flatten() {
                op.responses.responses.entry("default".into()).or_insert_with(|| error.clone().into());
            }
        }
        let components = openapi.components.get_or_insert_with(Default::default);
        components
            .add_security_scheme("token", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-access-token"))));
        // The operator credential: `Authorization: Bearer <operator token>` (or the same value
        // in `x-access-token`, or as a browser's Basic-auth password).
        components.add_security_scheme(
            "operator",
            SecurityScheme::Http(utoipa::openapi::security::Http::new(
                utoipa::openapi::security::HttpAuthScheme::Bearer,
            )),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "mysocket", description = "Accounts, sockets, tunnels and the cluster; compatible with the mysocket.io API."),
    paths(
        crate::api::dashboard::page,
        crate::api::dashboard::operator_page,
        crate::api::cluster::metrics,
        crate::api::cluster::healthz,
        crate::api::cluster::readyz,
        crate::api::cluster::cluster,
        crate::api::cluster::digest,
        crate::api::cluster::ca_pem,
        crate::api::cluster::add_node,
        crate::api::cluster::remove_node,
        crate::api::accounts::create_user,
        crate::api::accounts::login,
        crate::api::accounts::refresh,
        crate::api::accounts::get_user,
        crate::api::credentials::list,
        crate::api::credentials::revoke,
        crate::api::credentials::create_key,
        crate::api::sockets::list,
        crate::api::sockets::list_connect,
        crate::api::sockets::create,
        crate::api::sockets::connect,
        crate::api::sockets::show,
        crate::api::sockets::update,
        crate::api::sockets::remove,
        crate::api::sockets::list_tunnels,
        crate::api::sockets::create_tunnel,
        crate::api::sockets::show_tunnel,
        crate::api::sockets::remove_tunnel,
        crate::api::sockets::recent_log,
        crate::api::console::page,
        crate::api::console::sign_in,
        crate::api::console::sign_out,
        crate::api::console::provider_sign_in,
        crate::api::console::provider_callback,
    ),
    components(schemas(ErrorBody, ClusterView, NodeView, AddNode, DigestView, Health, UserCreate, User, Login, TokenReply, CredentialView, ApiKeyCreate, ApiKeyCreated, SocketCreate, SocketUpdate, Socket, Tunnel, TunnelHolder, RecentLog, TunnelLog)),
    modifiers(&TokenHeader)
)]
pub struct ApiDoc;

/// The document as served.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
