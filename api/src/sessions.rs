//! `POST /api/users/{sub}/revoke` (admin, service): withdraw a user's access now.
//!
//! Every token of that user issued up to this moment (its `iat`, or without one, its `exp`
//! less the longest token lifetime) is refused from now on — at the handshake, on `refresh`
//! and on REST, by every process — and every open WebSocket of the user, on every gateway, is
//! closed with 4501. The user gets back in with a token issued after the revocation (a second
//! later at the earliest: `iat` counts whole seconds). The record is kept by the bus (in
//! process, or in Redis for every process, also those that start later) until the longest
//! token lifetime has passed: every token it refuses has expired by then.

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::Caller;
use axum::Json;
use axum::extract::{Path, State};
use switchyard_auth::now_secs;
use switchyard_protocol::rest::Revocation;
use switchyard_protocol::room::is_valid_id;
use switchyard_protocol::{ErrorBody, Role};

/// Withdraw a user's access now
///
/// Admins and services. Every token of the user issued up to now is refused from now on, by
/// every process, and every open WebSocket of the user, on every gateway, is closed with 4501.
#[utoipa::path(
    post,
    path = "/users/{sub}/revoke",
    tag = "users",
    operation_id = "revokeUser",
    security(("bearer" = ["admin", "service"])),
    params(("sub" = String, Path, description = "The user id (`sub`)", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "Revoked", body = Revocation),
        (status = 403, description = "`forbidden`: admins and services only", body = ErrorBody),
        (status = 422, description = "`invalid`: not a user id", body = ErrorBody),
    ),
)]
pub async fn revoke(
    State(state): State<ApiState>,
    caller: Caller,
    Path(sub): Path<String>,
) -> Result<Json<Revocation>, ApiError> {
    caller.require(&[Role::Admin, Role::Service])?;
    if !is_valid_id(&sub) {
        return Err(ApiError::invalid("user ids match [A-Za-z0-9_-]{1,64}"));
    }
    let at = now_secs();
    let until = at.saturating_add(state.verifier.max_lifetime().as_secs());
    state
        .backplane
        .controller
        .revoke_user(&sub, at, until)
        .await
        .map_err(|err| {
            tracing::warn!(%err, "revocation failed");
            ApiError::unavailable("the event bus is unavailable; retry")
        })?;
    tracing::info!(%sub, by = %caller.0.sub, at, "user's tokens and connections revoked");
    Ok(Json(Revocation {
        sub,
        revoked: true,
        revoked_at: at,
    }))
}
