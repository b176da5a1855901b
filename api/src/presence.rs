//! `GET /api/presence?room=`: who is present in a room — the same list a subscriber gets in
//! its subscribe reply, read from the presence every gateway keeps (in Redis in the
//! distributed mode, in this process in the embedded one).

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::Caller;
use axum::Json;
use axum::extract::{Query, State};
use switchyard_protocol::presence::{PresenceList, PresenceQuery, has_presence};
use switchyard_protocol::{ErrorBody, Role, Room};

/// Who is present in a room
///
/// Admins and services. The users present in a room with presence (`order:{id}`), ordered by
/// `sub`: each once, however many connections it has on however many gateways, with the
/// moment its presence was announced.
#[utoipa::path(
    get,
    path = "/presence",
    tag = "presence",
    operation_id = "getPresence",
    security(("bearer" = ["admin", "service"])),
    params(PresenceQuery),
    responses(
        (status = 200, description = "The users present", body = PresenceList),
        (status = 400, description = "`bad_request`: no `room`", body = ErrorBody),
        (status = 403, description = "`forbidden`: admins and services only", body = ErrorBody),
        (status = 422, description = "`invalid`: not a room, or a room without presence", body = ErrorBody),
        (status = 503, description = "`unavailable`: the bus (Redis) does not answer; retry", body = ErrorBody),
    ),
)]
pub async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    query: Result<Query<PresenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PresenceList>, ApiError> {
    caller.require(&[Role::Admin, Role::Service])?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let room = Room::parse(&query.room).map_err(|e| ApiError::invalid(e.to_string()))?;
    if !has_presence(&room) {
        return Err(ApiError::invalid(format!("{room} keeps no presence")));
    }
    let presence = state
        .backplane
        .presence
        .present(&room)
        .await
        .map_err(|err| {
            tracing::warn!(%err, "presence read failed");
            ApiError::unavailable("presence is unavailable; retry shortly")
        })?;
    Ok(Json(PresenceList { room, presence }))
}
