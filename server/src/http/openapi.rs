//! The OpenAPI document of the HTTP API, generated from the handlers' annotations and the
//! body types (utoipa), served at `GET /v1/openapi.json`.
//!
//! Generated, not written: a route or field added to the code appears here, and CI runs
//! schemathesis against a live server with this document, so a response that breaks its
//! documented status or schema, or any 500, fails the build.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::types::*;

/// The whole API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tern server HTTP API",
        description = "For business backends and operators: send system messages, manage groups, \
            presence, kicks and push tokens, and probe the server. Every error is \
            `{\"error\": CODE, \"message\": ...}` with the wire protocol's code names. \
            Authenticate with `Authorization: Bearer <api_key>` (the server's `api_key`)."
    ),
    paths(
        super::healthz,
        super::render_metrics,
        super::send_message,
        super::presence,
        super::kick,
        super::user_groups,
        super::push_token,
        super::create_group,
        super::group_info,
        super::add_members,
        super::remove_members,
        super::leave_group,
        super::dev_token,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerKey),
    tags(
        (name = "messages", description = "System and notification messages"),
        (name = "users", description = "Presence, kicks, a user's groups, push tokens"),
        (name = "groups", description = "Group management"),
        (name = "operations", description = "Health and metrics (no authentication)"),
        (name = "development", description = "Only on a server started with --dev"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme the routes refer to.
struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

pub(super) async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_of_the_router_is_documented() {
        let doc = ApiDoc::openapi();
        let json = serde_json::to_value(&doc).unwrap();
        let paths = json["paths"].as_object().unwrap();
        // The router's routes (http/mod.rs), besides this document itself.
        for (path, method) in [
            ("/healthz", "get"),
            ("/metrics", "get"),
            ("/v1/messages", "post"),
            ("/v1/users/{id}/presence", "get"),
            ("/v1/users/{id}/kick", "post"),
            ("/v1/users/{id}/groups", "get"),
            ("/v1/users/{id}/push-tokens", "post"),
            ("/v1/groups", "post"),
            ("/v1/groups/{id}", "get"),
            ("/v1/groups/{id}/members", "post"),
            ("/v1/groups/{id}/members/remove", "post"),
            ("/v1/groups/{id}/leave", "post"),
            ("/v1/dev/token", "post"),
        ] {
            assert!(
                paths[path][method].is_object(),
                "{method} {path} is not documented"
            );
        }
        assert_eq!(paths.len(), 13, "a documented path the test does not know");
        assert!(json["components"]["securitySchemes"]["bearer"].is_object());
        assert_eq!(
            json["components"]["schemas"]["SendRequest"]["properties"]["to"]["pattern"],
            crate::http::types::USER_ID_PATTERN
        );
    }
}
