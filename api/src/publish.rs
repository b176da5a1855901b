//! The server publish API: other backend services (an ETA engine, promotions, packing)
//! push events into rooms without going through the order CRUD.
//!
//! `POST /api/publish` and `POST /api/publish/batch`, roles `service` and `admin`. Events take
//! exactly the path built-in ones take — the broker's `publish`: same per-room offsets, same
//! fan-out, in both modes. There is no second path.

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::{Caller, Payload};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use switchyard_broker::Outgoing;
use switchyard_protocol::events::{EventNameError, check_publishable};
use switchyard_protocol::rest::{
    BatchRequest, BatchResult, BatchResults, PublishRequest, Published,
};
use switchyard_protocol::{ErrorBody, ErrorCode, Role, Room};

/// Most items in one batch.
pub const MAX_BATCH: usize = 1_000;

/// Deepest nesting of arrays and objects in an event's `data` (the object itself is level 1).
/// serde_json accepts any depth into a raw value, and the event goes to every member's parser
/// unchanged: browsers' and mobile JSON parsers give up (or overflow their stack) near 1,000
/// levels, and none of Switchyard's own events nests deeper than 3.
pub const MAX_DEPTH: usize = 64;

/// The deepest nesting of arrays and objects in a valid JSON text, in one pass without
/// recursion (so no input can exhaust the stack measuring it).
pub fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in json.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn reject(reason: &'static str, err: ApiError) -> ApiError {
    metrics::counter!("switchyard_publish_rejections_total", "reason" => reason).increment(1);
    err
}

/// Validates one item: room grammar, event name, data an object within the size limit.
fn validate(item: &PublishRequest, max_data: usize) -> Result<Room, ApiError> {
    let room = Room::parse(&item.room)
        .map_err(|e| reject("room", ApiError::invalid(format!("bad room: {e}"))))?;
    check_publishable(&item.event).map_err(|e| {
        reject(
            "event",
            ApiError::invalid(match e {
                EventNameError::Grammar => "event must match [a-z][a-z0-9_.-]{0,63}",
                EventNameError::Reserved => {
                    "event families order.*, revenue.*, partner.*, stock.* and chat.* are reserved for Switchyard"
                }
            }),
        )
    })?;
    if !item.data.get().starts_with('{') {
        return Err(reject(
            "data",
            ApiError::invalid("data must be a JSON object"),
        ));
    }
    if nesting_depth(item.data.get()) > MAX_DEPTH {
        return Err(reject(
            "depth",
            ApiError::invalid(format!(
                "data nests arrays and objects deeper than {MAX_DEPTH} levels"
            )),
        ));
    }
    if item.data.get().len() > max_data {
        return Err(reject(
            "too_large",
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                format!("data is larger than {max_data} bytes"),
            ),
        ));
    }
    Ok(room)
}

/// The bus could not take an event (counted).
fn bus_unavailable() -> ApiError {
    reject(
        "bus",
        ApiError::unavailable("the event bus is unavailable; retry"),
    )
}

async fn publish_one(
    state: &ApiState,
    room: &Room,
    item: PublishRequest,
) -> Result<Published, ApiError> {
    let offset = state
        .backplane
        .bus
        .publish(room, &item.event, item.data)
        .await
        .map_err(|err| {
            tracing::warn!(%err, "service publish failed");
            bus_unavailable()
        })?;
    metrics::counter!("switchyard_events_published_total", "source" => "service").increment(1);
    Ok(Published {
        room: room.as_str().to_owned(),
        offset,
    })
}

/// Publish an event into a room
///
/// Services and admins. The event takes the built-in path: the room's next offset, the same
/// fan-out. The families `order.*`, `revenue.*`, `partner.*`, `stock.*` and `chat.*` are reserved.
#[utoipa::path(
    post,
    path = "/publish",
    tag = "publish",
    operation_id = "publish",
    security(("bearer" = ["service", "admin"])),
    request_body = PublishRequest,
    responses(
        (status = 200, description = "Published, with the offset it got", body = Published),
        (status = 403, description = "`forbidden`: services and admins only", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: `data` over `SWITCHYARD_MAX_PUBLISH_DATA_BYTES`, or the body over its limit", body = ErrorBody),
        (status = 422, description = "`invalid`: a bad room, a bad or reserved event name, `data` not an object", body = ErrorBody),
    ),
)]
pub async fn publish(
    State(state): State<ApiState>,
    caller: Caller,
    body: Payload,
) -> Result<Json<Published>, ApiError> {
    caller
        .require(&[Role::Service, Role::Admin])
        .map_err(|e| reject("role", e))?;
    let item: PublishRequest = body.parse()?;
    let room = validate(&item, state.config.max_publish_data_bytes)?;
    Ok(Json(publish_one(&state, &room, item).await?))
}

/// Publish up to 1,000 events
///
/// Services and admins. One result per item, in order: the room and offset, or that item's
/// error. Items of one room are published in the order given, with consecutive offsets when
/// no other publisher writes to the room meanwhile; the batch goes to the bus at once (on
/// Redis one script call per 256 events, per hash slot on a cluster). The body may be up to
/// `SWITCHYARD_MAX_BATCH_BODY_BYTES`.
#[utoipa::path(
    post,
    path = "/publish/batch",
    tag = "publish",
    operation_id = "publishBatch",
    security(("bearer" = ["service", "admin"])),
    request_body = BatchRequest,
    responses(
        (status = 200, description = "One result per item", body = BatchResults),
        (status = 403, description = "`forbidden`: services and admins only", body = ErrorBody),
        (status = 422, description = "`invalid`: no items, or more than 1,000", body = ErrorBody),
    ),
)]
pub async fn publish_batch(
    State(state): State<ApiState>,
    caller: Caller,
    body: Payload,
) -> Result<Json<BatchResults>, ApiError> {
    caller
        .require(&[Role::Service, Role::Admin])
        .map_err(|e| reject("role", e))?;
    let batch: BatchRequest = body.parse()?;
    if batch.items.is_empty() || batch.items.len() > MAX_BATCH {
        return Err(ApiError::invalid(format!(
            "items must hold 1 to {MAX_BATCH} entries"
        )));
    }
    let mut results: Vec<Option<BatchResult>> = vec![None; batch.items.len()];
    // The valid items, in the order given, with their index in the batch.
    let mut indices = Vec::with_capacity(batch.items.len());
    let mut events = Vec::with_capacity(batch.items.len());
    for (i, raw) in batch.items.into_iter().enumerate() {
        let checked = serde_json::from_str::<PublishRequest>(raw.get())
            .map_err(|e| ApiError::invalid(format!("items[{i}]: {e}")))
            .and_then(|item| Ok((validate(&item, state.config.max_publish_data_bytes)?, item)));
        match checked {
            Ok((room, item)) => {
                indices.push(i);
                events.push(Outgoing {
                    room,
                    event: item.event,
                    data: item.data,
                });
            }
            Err(err) => results[i] = Some(BatchResult::Failed(err.body())),
        }
    }
    // One `Bus::publish_batch` for every valid item: on Redis one script call per 256 events
    // (per hash slot on a cluster), pipelined — not one round trip per event. Offsets stay
    // atomic per room, in the items' order within each room.
    let rooms: Vec<String> = events.iter().map(|e| e.room.as_str().to_owned()).collect();
    let outcomes = state.backplane.bus.publish_batch(events).await;
    let mut published = 0u64;
    for ((i, room), outcome) in indices.into_iter().zip(rooms).zip(outcomes) {
        results[i] = Some(match outcome {
            Ok(offset) => {
                published += 1;
                BatchResult::Published(Published { room, offset })
            }
            Err(err) => {
                tracing::warn!(%err, "service publish failed");
                BatchResult::Failed(bus_unavailable().body())
            }
        });
    }
    metrics::counter!("switchyard_events_published_total", "source" => "service")
        .increment(published);
    // Every index got a result: a validation error, or a publish outcome (the bus answers
    // one per event; an index it left out would be a bug, answered as unavailable).
    let results = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| BatchResult::Failed(bus_unavailable().body())))
        .collect();
    Ok(Json(BatchResults { results }))
}

#[cfg(test)]
mod tests {
    use super::nesting_depth;

    #[test]
    fn depth_counts_arrays_and_objects_but_not_strings() {
        assert_eq!(nesting_depth("{}"), 1);
        assert_eq!(nesting_depth(r#"{"a":[1,{"b":[]}],"c":{}}"#), 4);
        assert_eq!(nesting_depth(r#"{"s":"[[[{{{\"]]]"}"#), 1);
        let deep = format!("{}{}", "[".repeat(8_000), "]".repeat(8_000));
        assert_eq!(nesting_depth(&deep), 8_000);
    }
}
