//! `POST /api/users/{sub}/revoke` (admin, service): withdraw a user's access now — every
//! open WebSocket of that user, on every gateway, is closed with 4501 (do not reconnect with
//! the same token). Refusing tokens the user still holds is the identity provider's job
//! (short `exp`; the in-band `refresh` then fails there).

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::Caller;
use axum::Json;
use axum::extract::{Path, State};
use switchyard_broker::Control;
use switchyard_protocol::Role;
use switchyard_protocol::rest::Revocation;
use switchyard_protocol::room::is_valid_id;

pub async fn revoke(
    State(state): State<ApiState>,
    caller: Caller,
    Path(sub): Path<String>,
) -> Result<Json<Revocation>, ApiError> {
    caller.require(&[Role::Admin, Role::Service])?;
    if !is_valid_id(&sub) {
        return Err(ApiError::invalid("user ids match [A-Za-z0-9_-]{1,64}"));
    }
    state
        .broker
        .broadcast(Control::RevokeUser { sub: sub.clone() })
        .await
        .map_err(|err| {
            tracing::warn!(%err, "revoke broadcast failed");
            ApiError::unavailable("the event bus is unavailable; retry")
        })?;
    tracing::info!(%sub, by = %caller.0.sub, "user's connections revoked");
    Ok(Json(Revocation { sub, revoked: true }))
}
