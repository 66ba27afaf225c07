//! The HTTP API for business backends and operators.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `POST /v1/messages` | bearer | send a system/notification message to a user or (`"group": true`) a group (same storage, push and QoS path as chat) |
//! | `GET /v1/users/{id}/presence` | bearer | the user's live sessions |
//! | `POST /v1/users/{id}/kick` | bearer | end the user's sessions with reason `ADMIN` |
//! | `POST /v1/groups` | bearer | create a group `{"name", "members": [...]}` (first member owns it) |
//! | `GET /v1/groups/{id}` | bearer | group info |
//! | `POST /v1/groups/{id}/members` | bearer | add members `{"members": [...]}` |
//! | `POST /v1/groups/{id}/members/remove` | bearer | remove members `{"members": [...]}` |
//! | `POST /v1/groups/{id}/leave` | bearer | `{"user"}` leaves (an owner hands the group on) |
//! | `GET /v1/users/{id}/groups` | bearer | the user's groups |
//! | `POST /v1/users/{id}/push-tokens` | bearer | register a device's push token `{"device", "platform", "provider", "token"}` |
//! | `POST /v1/dev/token` | bearer, `--dev` only | mint a login token |
//! | `GET /healthz` | none | liveness and store check |
//! | `GET /metrics` | none | Prometheus text format |
//! | `GET /v1/openapi.json` | none | this API as an OpenAPI 3.1 document, generated from the handlers |
//!
//! `/healthz`, `/metrics` and `/v1/openapi.json` are unauthenticated so probes and scrapers work as usual;
//! the HTTP listener binds to loopback by default. Errors are JSON
//! `{"error": "<ERROR_CODE>", "message": "..."}` with the wire protocol's code names.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use tern_protocol::{ClientMsgId, ErrorCode, is_valid_user_id, pb};

use crate::registry::SessionCmd;
use crate::state::Shared;
use crate::store::{NewMessage, StoreError};

mod openapi;
pub mod types;

pub use openapi::ApiDoc;
use types::*;

#[derive(Clone)]
struct Api {
    shared: Arc<Shared>,
    metrics: Option<PrometheusHandle>,
}

/// An API error: an HTTP status plus a wire error code.
struct ApiError(StatusCode, ErrorCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(ErrorBody {
                error: self.1.as_str_name().to_owned(),
                message: self.2,
            }),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let (code, message) = crate::store::store_failure(e);
        let status = match code {
            ErrorCode::RecipientNotFound
            | ErrorCode::GroupNotFound
            | ErrorCode::MessageNotFound => StatusCode::NOT_FOUND,
            ErrorCode::NotAllowed => StatusCode::FORBIDDEN,
            ErrorCode::GroupFull | ErrorCode::InvalidArgument | ErrorCode::RecallExpired => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, code, message)
    }
}

fn bad_request(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, code, message.into())
}

/// Builds the router.
pub fn router(shared: Arc<Shared>, metrics: Option<PrometheusHandle>) -> Router {
    let api = Api { shared, metrics };
    let mut v1 = Router::new()
        .route("/v1/messages", post(send_message))
        .route("/v1/users/{id}/presence", get(presence))
        .route("/v1/users/{id}/kick", post(kick))
        .route("/v1/users/{id}/groups", get(user_groups))
        .route("/v1/users/{id}/push-tokens", post(push_token))
        .route("/v1/groups", post(create_group))
        .route("/v1/groups/{id}", get(group_info))
        .route("/v1/groups/{id}/members", post(add_members))
        .route("/v1/groups/{id}/members/remove", post(remove_members))
        .route("/v1/groups/{id}/leave", post(leave_group));
    if api.shared.config.dev {
        v1 = v1.route("/v1/dev/token", post(dev_token));
    }
    let v1 = v1.route_layer(middleware::from_fn_with_state(api.clone(), require_bearer));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .route("/v1/openapi.json", get(openapi::serve))
        .merge(v1)
        .with_state(api)
}

async fn require_bearer(
    State(api): State<Api>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let expected = api.shared.config.api_key.as_bytes();
    // Length-independent comparison of the key.
    let ok = presented.is_some_and(|p| {
        let p = p.as_bytes();
        p.len() == expected.len()
            && p.iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if !ok {
        metrics::counter!("tern_http_unauthorized_total").increment(1);
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            ErrorCode::BadToken,
            "missing or wrong bearer key".into(),
        ));
    }
    Ok(next.run(req).await)
}

/// The JSON body of a request: a JSON object (or `null` where the body is optional), with
/// anything else answered as an [`ErrorBody`] (`INVALID_ARGUMENT`: 415 without
/// `Content-Type: application/json`, 400 for bad JSON or not an object, 422 for a field of
/// the wrong type) instead of axum's plain-text rejection, so every error of the API has
/// the same shape. (serde alone would also take a struct written as a JSON array.)
struct Body<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime::Mime>().ok())
            .is_some_and(|m| {
                m.type_() == "application"
                    && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json"))
            });
        if !json {
            return Err(ApiError(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::InvalidArgument,
                "expected Content-Type: application/json".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| ApiError(r.status(), ErrorCode::InvalidArgument, r.body_text()))?;
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if !matches!(first, Some(b'{' | b'n')) {
            return Err(bad_request(
                ErrorCode::InvalidArgument,
                "the body must be a JSON object",
            ));
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(v)) => Ok(Body(v)),
            Err(r) => Err(ApiError(
                r.status(),
                ErrorCode::InvalidArgument,
                r.body_text(),
            )),
        }
    }
}

/// A checked `{id}` path segment (user or group id): 400 `INVALID_ARGUMENT` if it breaks
/// the id rule, before any work is done for it.
struct Id(String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError(r.status(), ErrorCode::InvalidArgument, r.body_text()))?;
        if !is_valid_user_id(&id) {
            return Err(bad_request(
                ErrorCode::InvalidArgument,
                "invalid id in the path",
            ));
        }
        Ok(Id(id))
    }
}

/// Liveness and a store round trip.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses(
        (status = 200, description = "Serving, and the store answers", body = Health),
        (status = 503, description = "The store does not answer", body = ErrorBody),
    ))]
async fn healthz(State(api): State<Api>) -> Result<Json<Health>, ApiError> {
    api.shared.store.head_seq("").await?;
    Ok(Json(Health {
        status: "ok".into(),
        sessions: api.shared.registry.len() as u64,
    }))
}

/// Prometheus metrics (text exposition format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "The metrics", body = String, content_type = "text/plain"),
        (status = 503, description = "No metrics recorder in this process", body = String, content_type = "text/plain"),
    ))]
async fn render_metrics(State(api): State<Api>) -> Response {
    match &api.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed",
        )
            .into_response(),
    }
}

/// Sends a system/notification message to a user, or into a group with `"group": true`,
/// on the same storage, push and QoS path as chat. Idempotent per `client_msg_id`.
#[utoipa::path(post, path = "/v1/messages", tag = "messages", security(("bearer" = [])),
    request_body = SendRequest,
    responses(
        (status = 200, description = "Stored (or stored before: `duplicate`)", body = SendResponse),
        (status = 400, description = "Invalid body, id or size", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer key", body = ErrorBody),
        (status = 403, description = "Not allowed (e.g. not a member)", body = ErrorBody),
        (status = 404, description = "Unknown recipient or group", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 422, description = "A field has the wrong type", body = ErrorBody),
        (status = 503, description = "The store is unavailable or busy; retry", body = ErrorBody),
    ))]
async fn send_message(
    State(api): State<Api>,
    Body(req): Body<SendRequest>,
) -> Result<Json<SendResponse>, ApiError> {
    if !is_valid_user_id(&req.to) {
        return Err(bad_request(
            ErrorCode::RecipientNotFound,
            "invalid recipient id",
        ));
    }
    if !is_valid_user_id(&req.from) {
        return Err(bad_request(ErrorCode::InvalidArgument, "invalid sender id"));
    }
    let body = match (req.text, req.body_base64) {
        (Some(t), None) => t.into_bytes(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|_| bad_request(ErrorCode::InvalidArgument, "body_base64 is not base64"))?,
        _ => {
            return Err(bad_request(
                ErrorCode::InvalidArgument,
                "give exactly one of text and body_base64",
            ));
        }
    };
    if body.len() > api.shared.config.max_body_bytes as usize {
        return Err(bad_request(ErrorCode::MessageTooLarge, "body too large"));
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let id = match req.client_msg_id {
        Some(hex) => ClientMsgId::from_hex(&hex).ok_or_else(|| {
            bad_request(
                ErrorCode::InvalidArgument,
                "client_msg_id must be 32 hex characters",
            )
        })?,
        None => ClientMsgId::generate(now_ms, &mut rand::rng()),
    };
    let stored = api
        .shared
        .store
        .store_message(NewMessage {
            sender: req.from.clone(),
            client_msg_id: id,
            recipient: req.to,
            kind: if req.group {
                pb::ConversationKind::Group
            } else {
                pb::ConversationKind::System
            },
            content_type: req.content_type,
            body: body.into(),
            client_ts_ms: now_ms,
            require_known_recipient: api.shared.config.require_known_recipient,
            to_service: false,
            from_backend: true,
            device: String::new(),
            send_seq: 0,
        })
        .await?;
    metrics::counter!("tern_http_messages_total").increment(1);
    let duplicate = stored.duplicate;
    if !duplicate {
        api.shared
            .message_stored(&req.from, false, stored.fanout, None);
    }
    Ok(Json(SendResponse {
        server_msg_id: stored.server_msg_id,
        server_ts_ms: stored.server_ts_ms,
        client_msg_id: id.to_hex(),
        duplicate,
    }))
}

/// The user's live sessions, on every node of a cluster.
#[utoipa::path(get, path = "/v1/users/{id}/presence", tag = "users", security(("bearer" = [])),
    params(UserPath),
    responses(
        (status = 200, description = "The sessions (none: offline)", body = Presence),
        (status = 400, description = "Invalid user id", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer key", body = ErrorBody),
    ))]
async fn presence(State(api): State<Api>, Id(id): Id) -> Json<Presence> {
    let cluster = api.shared.cluster.as_ref();
    let node = cluster.map(|c| c.node().to_owned());
    let mut sessions: Vec<_> = api
        .shared
        .registry
        .sessions_of(&id)
        .into_iter()
        .map(|s| SessionInfo {
            since_ms: crate::routing::since_ms(&s),
            device: s.device,
            platform: s.platform.as_str_name().to_owned(),
            remote: s.remote.to_string(),
            node: node.clone(),
        })
        .collect();
    if let Some(c) = cluster {
        sessions.extend(c.remote_sessions(&id).await.into_iter().map(|s| {
            SessionInfo {
                device: s.device,
                platform: pb::Platform::try_from(s.platform)
                    .unwrap_or(pb::Platform::Unspecified)
                    .as_str_name()
                    .to_owned(),
                remote: s.remote,
                since_ms: s.since_ms,
                node: Some(s.node),
            }
        }));
    }
    Json(Presence {
        user: id,
        online: !sessions.is_empty(),
        sessions,
    })
}

/// Ends the user's sessions with reason `ADMIN` (the clients show `text`).
#[utoipa::path(post, path = "/v1/users/{id}/kick", tag = "users", security(("bearer" = [])),
    params(UserPath),
    request_body(content = Option<KickRequest>, description = "Optional"),
    responses(
        (status = 200, description = "How many sessions were told to end", body = KickResponse),
        (status = 400, description = "Invalid user id or body", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer key", body = ErrorBody),
        (status = 415, description = "A body that is not `application/json`", body = ErrorBody),
        (status = 422, description = "A field has the wrong type", body = ErrorBody),
    ))]
async fn kick(
    State(api): State<Api>,
    Id(id): Id,
    req: Request,
) -> Result<Json<KickResponse>, ApiError> {
    // The body is optional: none at all is a kick with the default text.
    let text = if req.headers().contains_key(header::CONTENT_TYPE) {
        let Body(k) = Body::<Option<KickRequest>>::from_request(req, &()).await?;
        k.and_then(|k| k.text)
    } else {
        None
    }
    .unwrap_or_else(|| "signed out by the administrator".into());
    if let Some(c) = &api.shared.cluster {
        // The user's sessions on other nodes end too (not counted in `kicked`).
        c.publish(
            &id,
            pb::cluster_message::Body::Kick(pb::ClusterKick {
                reason: pb::KickReason::Admin as i32,
                text: text.clone(),
            }),
        );
    }
    let n = api.shared.registry.command_user(
        &id,
        SessionCmd::Kick {
            reason: pb::KickReason::Admin,
            text,
        },
    );
    tracing::info!(user = %id, sessions = n, "admin kick");
    Ok(Json(KickResponse {
        user: id,
        kicked: n as u64,
    }))
}

/// Mints a login token (only on a server started with `--dev`; 404 otherwise).
#[utoipa::path(post, path = "/v1/dev/token", tag = "development", security(("bearer" = [])),
    request_body = TokenRequest,
    responses(
        (status = 200, description = "A token", body = TokenResponse),
        (status = 400, description = "Invalid user id or body", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer key", body = ErrorBody),
        (status = 404, description = "Not a `--dev` server"),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 422, description = "A field has the wrong type", body = ErrorBody),
    ))]
async fn dev_token(
    State(api): State<Api>,
    Body(req): Body<TokenRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    if !is_valid_user_id(&req.user) {
        return Err(bad_request(ErrorCode::InvalidArgument, "invalid user id"));
    }
    if req.ttl_secs.is_some_and(|t| t > MAX_TOKEN_TTL_SECS) {
        return Err(bad_request(
            ErrorCode::InvalidArgument,
            "ttl_secs is more than ten years",
        ));
    }
    let token = crate::auth::mint(
        &api.shared.config.token_secret,
        &req.user,
        req.device.as_deref(),
        req.ttl_secs.unwrap_or(30 * 24 * 3600),
    );
    Ok(Json(TokenResponse { token }))
}

/// The first group a group request answered (each of ours concerns exactly one).
fn one_group(groups: Vec<pb::GroupInfo>) -> Result<Json<Group>, ApiError> {
    groups.first().map(|g| Json(Group::from(g))).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            ErrorCode::GroupNotFound,
            "no such group".into(),
        )
    })
}

async fn group_call(api: &Api, op: pb::group_request::Op) -> Result<Json<Group>, ApiError> {
    one_group(crate::groups::handle(&api.shared, None, Some(op)).await?)
}

/// Creates a group; the first member owns it.
#[utoipa::path(post, path = "/v1/groups", tag = "groups", security(("bearer" = [])),
    request_body = CreateGroup,
    responses(
        (status = 200, description = "The new group", body = Group),
        (status = 400, description = "Invalid name, members or body; too many members", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer key", body = ErrorBody),
        (status = 404, description = "A member is not a known user (with `require_known_recipient`)", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 422, description = "A field has the wrong type", body = ErrorBody),
        (status = 503, description = "The store is unavailable or busy; retry", body = ErrorBody),
    ))]
async fn create_group(
    State(api): State<Api>,
    Body(req): Body<CreateGroup>,
) -> Result<Json<Group>, ApiError> {
    use pb::group_request::{Create, Op};
    group_call(
        &api,
        Op::Create(Create {
            name: req.name,
            members: req.members,
            large: req.large,
        }),
    )
    .await
}

/// A group's name, owner and members.
#[utoipa::path(get, path = "/v1/groups/{id}", tag = "groups", security(("bearer" = [])),
    params(GroupPath),
    responses(
        (status = 200, description = "The group", body = Group),
        (status = 400, description = "Invalid group id", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer key", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
        (status = 503, description = "The store is unavailable or busy; retry", body = ErrorBody),
    ))]
async fn group_info(State(api): State<Api>, Id(id): Id) -> Result<Json<Group>, ApiError> {
    use pb::group_request::{Group, Op};
    group_call(&api, Op::Info(Group { group: id })).await
}

/// Adds members.
#[utoipa::path(post, path = "/v1/groups/{id}/members", tag = "groups", security(("bearer" = [])),
    params(GroupPath), request_body = Members,
    responses(
        (status = 200, description = "The group after the change", body = Group),
        (status = 400, description = "Invalid id, members or body; the group would be too large", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer key", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 422, description = "A field has the wrong type", body = ErrorBody),
        (status = 503, description = "The store is unavailable or busy; retry", body = ErrorBody),
    ))]
async fn add_members(
    State(api): State<Api>,
    Id(id): Id,
    Body(req): Body<Members>,
) -> Result<Json<Group>, ApiError> {
    group_call(&api, pb::group_request::Op::Add(req.of(id))).await
}

/// Removes members.
#[utoipa::path(post, path = "/v1/groups/{id}/members/remove", tag = "groups", security(("bearer" = [])),
    params(GroupPath), request_body = Members,
    responses(
        (status = 200, description = "The group after the change", body = Group),
        (status = 400, description = "Invalid id, members or body", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer key", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 422, description = "A field has the wrong type", body = ErrorBody),
        (status = 503, description = "The store is unavailable or busy; retry", body = ErrorBody),
    ))]
async fn remove_members(
    State(api): State<Api>,
    Id(id): Id,
    Body(req): Body<Members>,
) -> Result<Json<Group>, ApiError> {
    group_call(&api, pb::group_request::Op::Remove(req.of(id))).await
}

/// A member leaves (an owner hands the group on).
#[utoipa::path(post, path = "/v1/groups/{id}/leave", tag = "groups", security(("bearer" = [])),
    params(GroupPath), request_body = Leave,
    responses(
        (status = 200, description = "The group after the change", body = Group),
        (status = 400, description = "Invalid id or body", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer key", body = ErrorBody),
        (status = 403, description = "Not a member", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 422, description = "A field has the wrong type", body = ErrorBody),
        (status = 503, description = "The store is unavailable or busy; retry", body = ErrorBody),
    ))]
async fn leave_group(
    State(api): State<Api>,
    Id(id): Id,
    Body(req): Body<Leave>,
) -> Result<Json<Group>, ApiError> {
    use pb::group_request::{Group, Op};
    if !is_valid_user_id(&req.user) {
        return Err(bad_request(ErrorCode::InvalidArgument, "invalid user id"));
    }
    one_group(
        crate::groups::handle(
            &api.shared,
            Some(&req.user),
            Some(Op::Leave(Group { group: id })),
        )
        .await?,
    )
}

/// The user's groups.
#[utoipa::path(get, path = "/v1/users/{id}/groups", tag = "users", security(("bearer" = [])),
    params(UserPath),
    responses(
        (status = 200, description = "The groups", body = UserGroups),
        (status = 400, description = "Invalid user id", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer key", body = ErrorBody),
        (status = 503, description = "The store is unavailable or busy; retry", body = ErrorBody),
    ))]
async fn user_groups(State(api): State<Api>, Id(id): Id) -> Result<Json<UserGroups>, ApiError> {
    let groups = api.shared.store.groups_of(&id).await?;
    Ok(Json(UserGroups {
        user: id,
        groups: groups.iter().map(Group::from).collect(),
    }))
}

/// Registers a device's push token (offline notifications go to it).
#[utoipa::path(post, path = "/v1/users/{id}/push-tokens", tag = "users", security(("bearer" = [])),
    params(UserPath), request_body = PushTokenBody,
    responses(
        (status = 200, description = "Stored", body = PushTokenSaved),
        (status = 400, description = "Invalid user, device or body", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer key", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 422, description = "A field has the wrong type", body = ErrorBody),
        (status = 503, description = "The store is unavailable or busy; retry", body = ErrorBody),
    ))]
async fn push_token(
    State(api): State<Api>,
    Id(id): Id,
    Body(req): Body<PushTokenBody>,
) -> Result<Json<PushTokenSaved>, ApiError> {
    if req.device.is_empty() || req.device.len() > 128 {
        return Err(bad_request(ErrorCode::InvalidArgument, "invalid device id"));
    }
    let platform = req
        .platform
        .as_deref()
        .and_then(pb::Platform::from_str_name)
        .unwrap_or(pb::Platform::Unspecified);
    api.shared
        .store
        .set_push_token(&id, &req.device, platform, &req.provider, &req.token)
        .await?;
    Ok(Json(PushTokenSaved {
        user: id,
        device: req.device,
    }))
}
