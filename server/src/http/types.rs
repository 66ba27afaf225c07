//! The bodies of the HTTP API: what each route reads and answers, as plain serde types.
//!
//! They carry their OpenAPI schemas (utoipa's `ToSchema`) so the document served at
//! `/v1/openapi.json` is generated from the same types the handlers use and cannot drift
//! from them; schemathesis checks the running server against it in CI.

use serde::{Deserialize, Serialize};
use tern_protocol::pb;
use utoipa::{IntoParams, ToSchema};

/// A user id: 1–64 characters of ASCII letters, digits and `.`, `_`, `-`, `@`
/// (the wire protocol's rule, `tern_protocol::is_valid_user_id`).
pub const USER_ID_PATTERN: &str = "^[A-Za-z0-9._@-]{1,64}$";

/// The longest token lifetime `POST /v1/dev/token` mints: ten years.
pub const MAX_TOKEN_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

/// A user id (as a schema for list items).
#[derive(ToSchema)]
#[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
#[allow(dead_code)] // only its schema is used
pub struct UserId(String);

/// Every error: an HTTP status plus one of the wire protocol's error code names.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The wire protocol's error code name, e.g. `INVALID_ARGUMENT`, `BAD_TOKEN`,
    /// `GROUP_NOT_FOUND`, `STORE_UNAVAILABLE` (docs/protocol.md lists them all).
    #[schema(example = "INVALID_ARGUMENT")]
    pub error: String,
    /// What was wrong, for a person.
    pub message: String,
}

/// The `{id}` of a `/v1/users/{id}/...` route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserPath {
    /// The user id.
    #[param(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub id: String,
}

/// The `{id}` of a `/v1/groups/{id}...` route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct GroupPath {
    /// The group id (as `POST /v1/groups` answered it).
    #[param(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub id: String,
}

/// Answer of `GET /healthz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` (a failing store answers 503 with an [`ErrorBody`]).
    #[schema(example = "ok")]
    pub status: String,
    /// Live sessions on this server.
    pub sessions: u64,
}

/// Body of `POST /v1/messages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// Recipient user id, or group id with `"group": true`.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub to: String,
    /// Send into group `to` (as `from`, which need not be a member).
    #[serde(default)]
    pub group: bool,
    /// Sending (system/service) account; default `system`.
    #[serde(default = "default_system")]
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$", default = "system")]
    pub from: String,
    /// UTF-8 text body (content type 0 by default). Exactly one of `text` and
    /// `body_base64` must be given (400 otherwise); the body is at most the server's
    /// `max_body_bytes`.
    pub text: Option<String>,
    /// Binary body, base64.
    pub body_base64: Option<String>,
    /// App-defined content type.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 4294967295_u64)]
    pub content_type: u32,
    /// 32 hex characters; an idempotency key. Generated when absent.
    #[schema(pattern = "^[0-9a-fA-F]{32}$")]
    pub client_msg_id: Option<String>,
}

fn default_system() -> String {
    "system".into()
}

/// Answer of `POST /v1/messages`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SendResponse {
    /// Server message id.
    pub server_msg_id: u64,
    /// Server timestamp, milliseconds since the Unix epoch.
    pub server_ts_ms: u64,
    /// The idempotency key used.
    pub client_msg_id: String,
    /// Whether this key was stored before (nothing new was sent).
    pub duplicate: bool,
}

/// One live session of a user.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionInfo {
    /// The device id the client logged in with.
    pub device: String,
    /// `ANDROID`, `IOS`, `DESKTOP`, `WEB`, ... (`PLATFORM_UNSPECIFIED` when not given).
    pub platform: String,
    /// The client's address as its node sees it.
    pub remote: String,
    /// When the session logged in, milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// The cluster node holding the session (`null` on a single node).
    #[serde(default)]
    pub node: Option<String>,
}

/// Answer of `GET /v1/users/{id}/presence`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Presence {
    /// The user asked about.
    pub user: String,
    /// Whether the user has at least one live session.
    pub online: bool,
    /// The live sessions.
    pub sessions: Vec<SessionInfo>,
}

/// Optional body of `POST /v1/users/{id}/kick`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct KickRequest {
    /// What the kicked clients show; default "signed out by the administrator".
    #[serde(default)]
    pub text: Option<String>,
}

/// Answer of `POST /v1/users/{id}/kick`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KickResponse {
    /// The user kicked.
    pub user: String,
    /// How many sessions were told to end on the node that answered; in a cluster the
    /// other nodes end theirs too, uncounted here.
    pub kicked: u64,
}

/// Body of `POST /v1/dev/token`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The user the token logs in as.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub user: String,
    /// Binds the token to one device id.
    pub device: Option<String>,
    /// Lifetime in seconds; default 30 days, at most ten years.
    #[schema(minimum = 0, maximum = 315360000_u64)]
    pub ttl_secs: Option<u64>,
}

/// Answer of `POST /v1/dev/token`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// The login token.
    pub token: String,
}

/// Body of `POST /v1/groups`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    /// Display name, at most 256 bytes of UTF-8.
    #[schema(max_length = 256)]
    pub name: String,
    /// Member user ids (at most 2,000 in one request); the first one owns the group.
    #[schema(value_type = Vec<UserId>, min_items = 1, max_items = 2000)]
    pub members: Vec<String>,
    /// Read diffusion (see docs/operations.md).
    #[serde(default)]
    pub large: bool,
}

/// Body of `POST /v1/groups/{id}/members` and `POST /v1/groups/{id}/members/remove`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Members {
    /// User ids, at most 2,000 per request.
    #[schema(value_type = Vec<UserId>, max_items = 2000)]
    pub members: Vec<String>,
}

impl Members {
    /// The wire request for these members of `group`.
    pub fn of(self, group: String) -> pb::group_request::Members {
        pb::group_request::Members {
            group,
            members: self.members,
        }
    }
}

/// Body of `POST /v1/groups/{id}/leave`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Leave {
    /// The member who leaves.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub user: String,
}

/// A group as the API answers it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Group {
    /// The group id.
    pub group: String,
    /// Display name.
    pub name: String,
    /// The owner's user id.
    pub owner: String,
    /// Member user ids in join order.
    pub members: Vec<String>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Read diffusion.
    pub large: bool,
}

impl From<&pb::GroupInfo> for Group {
    fn from(g: &pb::GroupInfo) -> Self {
        Group {
            group: g.group.clone(),
            name: g.name.clone(),
            owner: g.owner.clone(),
            members: g.members.clone(),
            created_ms: g.created_ms,
            large: g.large,
        }
    }
}

/// Answer of `GET /v1/users/{id}/groups`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserGroups {
    /// The user asked about.
    pub user: String,
    /// The user's groups.
    pub groups: Vec<Group>,
}

/// Body of `POST /v1/users/{id}/push-tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushTokenBody {
    /// The device id (1–128 bytes) the token belongs to.
    #[schema(min_length = 1, max_length = 128)]
    pub device: String,
    /// `ANDROID`, `IOS`, ...; anything else is stored as unspecified.
    #[serde(default)]
    pub platform: Option<String>,
    /// The push provider, e.g. `fcm` or `apns`.
    pub provider: String,
    /// The provider's device token.
    pub token: String,
}

/// Answer of `POST /v1/users/{id}/push-tokens`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PushTokenSaved {
    /// The user.
    pub user: String,
    /// The device whose token was stored.
    pub device: String,
}
