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
//!
//! `/healthz` and `/metrics` are unauthenticated so probes and scrapers work as usual;
//! the HTTP listener binds to loopback by default. Errors are JSON
//! `{"error": "<ERROR_CODE>", "message": "..."}` with the wire protocol's code names.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tern_protocol::{ClientMsgId, ErrorCode, is_valid_user_id, pb};

use crate::registry::SessionCmd;
use crate::state::Shared;
use crate::store::{NewMessage, StoreError};

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
            Json(json!({ "error": self.1.as_str_name(), "message": self.2 })),
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

async fn healthz(State(api): State<Api>) -> Result<Json<serde_json::Value>, ApiError> {
    api.shared.store.head_seq("").await?;
    Ok(Json(
        json!({ "status": "ok", "sessions": api.shared.registry.len() }),
    ))
}

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

/// Body of `POST /v1/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// Recipient user id, or group id with `"group": true`.
    pub to: String,
    /// Send into group `to` (as `from`, which need not be a member).
    #[serde(default)]
    pub group: bool,
    /// Sending (system/service) account; default `system`.
    #[serde(default = "default_system")]
    pub from: String,
    /// UTF-8 text body (content type 0 by default). Exactly one of `text` and `body_base64`.
    pub text: Option<String>,
    /// Binary body, base64.
    pub body_base64: Option<String>,
    /// App-defined content type.
    #[serde(default)]
    pub content_type: u32,
    /// 32 hex characters; an idempotency key. Generated when absent.
    pub client_msg_id: Option<String>,
}

fn default_system() -> String {
    "system".into()
}

/// Response of `POST /v1/messages`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SendResponse {
    /// Server message id.
    pub server_msg_id: u64,
    /// Server timestamp.
    pub server_ts_ms: u64,
    /// The idempotency key used.
    pub client_msg_id: String,
    /// Whether this key was stored before (nothing new was sent).
    pub duplicate: bool,
}

async fn send_message(
    State(api): State<Api>,
    Json(req): Json<SendRequest>,
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

async fn presence(State(api): State<Api>, Path(id): Path<String>) -> Json<serde_json::Value> {
    let sessions: Vec<_> = api
        .shared
        .registry
        .sessions_of(&id)
        .into_iter()
        .map(|s| {
            json!({
                "device": s.device,
                "platform": s.platform.as_str_name(),
                "remote": s.remote.to_string(),
                "since_ms": s.since.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
            })
        })
        .collect();
    Json(json!({ "user": id, "online": !sessions.is_empty(), "sessions": sessions }))
}

#[derive(Debug, Default, Deserialize)]
struct KickRequest {
    #[serde(default)]
    text: Option<String>,
}

async fn kick(
    State(api): State<Api>,
    Path(id): Path<String>,
    body: Option<Json<KickRequest>>,
) -> Json<serde_json::Value> {
    let text = body
        .and_then(|b| b.0.text)
        .unwrap_or_else(|| "signed out by the administrator".into());
    let n = api.shared.registry.command_user(
        &id,
        SessionCmd::Kick {
            reason: pb::KickReason::Admin,
            text,
        },
    );
    tracing::info!(user = %id, sessions = n, "admin kick");
    Json(json!({ "user": id, "kicked": n }))
}

#[derive(Debug, Deserialize)]
struct TokenRequest {
    user: String,
    device: Option<String>,
    ttl_secs: Option<u64>,
}

async fn dev_token(
    State(api): State<Api>,
    Json(req): Json<TokenRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !is_valid_user_id(&req.user) {
        return Err(bad_request(ErrorCode::InvalidArgument, "invalid user id"));
    }
    let token = crate::auth::mint(
        &api.shared.config.token_secret,
        &req.user,
        req.device.as_deref(),
        req.ttl_secs.unwrap_or(30 * 24 * 3600),
    );
    Ok(Json(json!({ "token": token })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateGroup {
    name: String,
    members: Vec<String>,
    /// Read diffusion (see docs/operations.md).
    #[serde(default)]
    large: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Members {
    members: Vec<String>,
}

fn group_json(g: &pb::GroupInfo) -> serde_json::Value {
    json!({
        "group": g.group,
        "name": g.name,
        "owner": g.owner,
        "members": g.members,
        "created_ms": g.created_ms,
        "large": g.large,
    })
}

async fn group_call(
    api: &Api,
    op: pb::group_request::Op,
) -> Result<Json<serde_json::Value>, ApiError> {
    let groups = crate::groups::handle(&api.shared, None, Some(op)).await?;
    Ok(Json(groups.first().map(group_json).unwrap_or_default()))
}

async fn create_group(
    State(api): State<Api>,
    Json(req): Json<CreateGroup>,
) -> Result<Json<serde_json::Value>, ApiError> {
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

async fn group_info(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    use pb::group_request::{Group, Op};
    group_call(&api, Op::Info(Group { group: id })).await
}

async fn add_members(
    State(api): State<Api>,
    Path(id): Path<String>,
    Json(req): Json<Members>,
) -> Result<Json<serde_json::Value>, ApiError> {
    use pb::group_request::{Members, Op};
    let op = Op::Add(Members {
        group: id,
        members: req.members,
    });
    group_call(&api, op).await
}

async fn remove_members(
    State(api): State<Api>,
    Path(id): Path<String>,
    Json(req): Json<Members>,
) -> Result<Json<serde_json::Value>, ApiError> {
    use pb::group_request::{Members, Op};
    let op = Op::Remove(Members {
        group: id,
        members: req.members,
    });
    group_call(&api, op).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Leave {
    user: String,
}

async fn leave_group(
    State(api): State<Api>,
    Path(id): Path<String>,
    Json(req): Json<Leave>,
) -> Result<Json<serde_json::Value>, ApiError> {
    use pb::group_request::{Group, Op};
    let groups = crate::groups::handle(
        &api.shared,
        Some(&req.user),
        Some(Op::Leave(Group { group: id })),
    )
    .await?;
    Ok(Json(groups.first().map(group_json).unwrap_or_default()))
}

async fn user_groups(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let groups = api.shared.store.groups_of(&id).await?;
    Ok(Json(json!({
        "user": id,
        "groups": groups.iter().map(group_json).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushTokenBody {
    device: String,
    #[serde(default)]
    platform: Option<String>,
    provider: String,
    token: String,
}

async fn push_token(
    State(api): State<Api>,
    Path(id): Path<String>,
    Json(req): Json<PushTokenBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !is_valid_user_id(&id) || req.device.is_empty() || req.device.len() > 128 {
        return Err(bad_request(
            ErrorCode::InvalidArgument,
            "invalid user or device id",
        ));
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
    Ok(Json(json!({ "user": id, "device": req.device })))
}
