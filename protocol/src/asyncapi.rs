//! The WebSocket protocol as an AsyncAPI 3.0 document (`protocol/asyncapi.yaml` is this
//! module's output; `switchyard/tests/asyncapi.rs` fails when the file is stale, validates it
//! against the AsyncAPI 3.0.0 schema, and validates real frames against it).
//!
//! The data schemas (orders, events, positions, the error shape, …) are this crate's types,
//! through the same utoipa derivations as the OpenAPI document. Written here, beside them:
//! the frames' envelopes (`{"type": …}`, `{"op": …}`), the channels — the connection `/ws`
//! and the rooms, with their grammar and who may join — and the operations: what the server
//! receives (each op, with its reply) and what it sends.
//!
//! From the server's point of view: `receive` is a frame a client sends, `send` one the
//! server sends.

use crate::catalog::{Product, StockLevel};
use crate::chat::{ChatMessage, ChatState};
use crate::client::{OpName, StreamPosition};
use crate::close;
use crate::error::{ErrorBody, ErrorCode};
use crate::events::{
    BuiltinEvent, ChatRead, ChatTyping, OrderAssigned, OrderCreated, OrderPaid, OrderRefunded,
    OrderStatusChanged, PartnerLocation, PresenceJoin, PresenceLeave, RevenueUpdated, StockLow,
    StockOut, StockUpdated,
};
use crate::order::{Order, Revenue};
use crate::presence::{FleetPartner, FleetSnapshot, Present};
use crate::role::Role;
use crate::room::{self, Room};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

/// A room id's grammar (after `user:` or `order:`).
const ID: &str = "[A-Za-z0-9_-]{1,64}";

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// `T`'s schema and every schema it refers to, by name.
fn add<T: ToSchema>(schemas: &mut Map<String, Value>) {
    let mut all = vec![(T::name().into_owned(), T::schema())];
    T::schemas(&mut all);
    for (name, schema) in all {
        schemas.insert(name, serde_json::to_value(schema).unwrap_or_default());
    }
}

/// A frame's envelope: an object with `tag` = `value` and these properties.
fn frame(tag: &str, value: &str, description: &str, required: &[&str], properties: Value) -> Value {
    let mut props = Map::new();
    props.insert(tag.to_owned(), json!({ "const": value }));
    if let Value::Object(more) = properties {
        props.extend(more);
    }
    let mut required: Vec<&str> = required.to_vec();
    required.insert(0, tag);
    json!({
        "type": "object",
        "description": description,
        "required": required,
        "properties": props,
        "additionalProperties": false,
    })
}

/// The `id` an op may carry and its reply echoes.
fn op_id() -> Value {
    json!({ "type": "integer", "format": "int64", "description": "Echoed in the reply, to match it to the op." })
}

fn room_of(kinds: &[&str]) -> Value {
    let alternatives: Vec<String> = kinds
        .iter()
        .map(|k| match *k {
            "admin:revenue" => "admin:revenue".to_owned(),
            "admin:inventory" => "admin:inventory".to_owned(),
            "admin:orders" => "admin:orders".to_owned(),
            "admin:fleet" => "admin:fleet".to_owned(),
            kind => format!("{kind}:{ID}"),
        })
        .collect();
    json!({ "type": "string", "pattern": format!("^({})$", alternatives.join("|")) })
}

/// The `epoch` an event carries when it is the first the connection gets of its room in an
/// epoch it had not heard of (protocol/README.md, "A new epoch on a live connection").
fn event_epoch() -> Value {
    json!({
        "type": "string",
        "description": "Present only on the first event of the room in a new epoch (its offsets \
            started again): the room's position is then `{epoch, offset}`; events without it \
            count in the epoch the connection last heard of for the room.",
    })
}

/// A built-in event's frame, in `rooms`.
fn event_frame<E: BuiltinEvent + ToSchema>(rooms: &[&str]) -> Value {
    let latest = if E::LATEST_VALUE {
        " A latest-value event: a connection that reads slower than they come gets the newest \
         one per room (offsets may jump over replaced ones)."
    } else {
        ""
    };
    frame(
        "type",
        "event",
        &format!("`{}` in {}.{latest}", E::NAME, rooms.join(", ")),
        &["room", "event", "offset", "data"],
        json!({
            "room": room_of(rooms),
            "event": { "const": E::NAME },
            "offset": { "type": "integer", "minimum": 1, "description": "+1 per event published to the room, within its epoch." },
            "epoch": event_epoch(),
            "data": schema_ref(&E::name()),
        }),
    )
}

/// A message of the document: its payload schema (a component) and an example.
fn message(name: &str, title: &str, summary: &str, payload: &str, example: Value) -> Value {
    json!({
        "name": name,
        "title": title,
        "summary": summary,
        "contentType": "application/json",
        "payload": schema_ref(payload),
        "examples": [{ "name": name, "payload": example }],
    })
}

fn message_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/messages/{name}") })
}

fn channel_message_ref(channel: &str, name: &str) -> Value {
    json!({ "$ref": format!("#/channels/{channel}/messages/{name}") })
}

/// The close codes a server may end a connection with, and what a client should do.
fn close_codes() -> Value {
    let codes = [
        (
            close::NORMAL,
            "normal closure (the client asked)",
            "nothing",
        ),
        (
            close::PROTOCOL,
            "WebSocket protocol error",
            "fix the client",
        ),
        (
            close::INVALID_PAYLOAD,
            "a text frame was not valid UTF-8",
            "fix the client",
        ),
        (
            close::TOO_BIG,
            "frame or message over SWITCHYARD_MAX_FRAME_BYTES",
            "fix the client",
        ),
        (
            close::INTERNAL,
            "internal server error",
            "reconnect with backoff",
        ),
        (
            close::SHUTDOWN,
            "server shutting down (drain)",
            "reconnect (another instance answers) and recover",
        ),
        (
            close::TOKEN_EXPIRED,
            "token expired (no refresh came first)",
            "get a fresh token, reconnect, recover",
        ),
        (
            close::IDLE_TIMEOUT,
            "idle: nothing received within the idle window",
            "reconnect and recover",
        ),
        (
            close::SLOW_CONSUMER,
            "slow consumer: an ordered event did not fit the outbound queue",
            "reconnect and recover",
        ),
        (
            close::POLICY_VIOLATION,
            "policy violation",
            "do not reconnect; fix the client or token",
        ),
        (
            close::REVOKED,
            "the user's access was withdrawn",
            "do not reconnect with the same token",
        ),
    ];
    Value::Array(
        codes
            .iter()
            .map(|(code, meaning, then)| {
                json!({ "code": code, "meaning": meaning, "client": then, "reconnect": close::should_reconnect(*code) })
            })
            .collect(),
    )
}

const SOCKET: &str = "The connection. The token is checked during the handshake, before the upgrade: \
a refused client gets an HTTP status and the one error body (`HandshakeRefusal`: 401 no, bad or \
expired token, or a service token; 403 an `Origin` not allowed; 400 a bad upgrade or `since`; 429 \
over the per-user connection limit; 503 gateway full or draining) and never a socket. Token \
sources, first match wins: `Authorization: Bearer <jwt>`; the subprotocols `switchyard.v1, \
bearer.<jwt>` (browsers; `switchyard.v1` is selected); `?access_token=<jwt>`.\n\nFrames are JSON \
text frames, one message each (a binary frame is answered with `bad_request`). The first frame is \
`welcome`; every op may carry an integer `id`, echoed in its `ok` or `error` reply. The connection \
ends with a close code (`x-close-codes`): 4000–4499 reconnect with backoff and recover with \
`since`, 4500–4999 do not reconnect.";

/// The whole document.
pub fn document() -> Value {
    let mut schemas = Map::new();
    add::<Room>(&mut schemas);
    add::<Role>(&mut schemas);
    add::<StreamPosition>(&mut schemas);
    add::<OpName>(&mut schemas);
    add::<ErrorCode>(&mut schemas);
    add::<ErrorBody>(&mut schemas);
    add::<Order>(&mut schemas);
    add::<Revenue>(&mut schemas);
    add::<OrderCreated>(&mut schemas);
    add::<OrderStatusChanged>(&mut schemas);
    add::<OrderAssigned>(&mut schemas);
    add::<OrderPaid>(&mut schemas);
    add::<OrderRefunded>(&mut schemas);
    add::<RevenueUpdated>(&mut schemas);
    add::<PartnerLocation>(&mut schemas);
    add::<Product>(&mut schemas);
    add::<StockLevel>(&mut schemas);
    add::<StockUpdated>(&mut schemas);
    add::<StockLow>(&mut schemas);
    add::<StockOut>(&mut schemas);
    add::<ChatMessage>(&mut schemas);
    add::<ChatTyping>(&mut schemas);
    add::<ChatRead>(&mut schemas);
    add::<ChatState>(&mut schemas);
    add::<Present>(&mut schemas);
    add::<PresenceJoin>(&mut schemas);
    add::<PresenceLeave>(&mut schemas);
    add::<FleetPartner>(&mut schemas);
    add::<FleetSnapshot>(&mut schemas);

    let envelopes = json!({
        "HandshakeRefusal": {
            "description": "The body of a refused handshake: the one error shape, and `reason`, \
                            the old name of `message` (deprecated, sent by this release only).",
            "allOf": [schema_ref("ErrorBody"), {
                "type": "object",
                "properties": { "reason": { "type": "string", "deprecated": true } },
            }],
        },
        "SubscribeOp": frame("op", "subscribe",
            "Join a room. With `since` (the position of the last event applied), recover what \
             was missed; see the `ok` reply's `recovered`.",
            &["room"],
            json!({ "room": schema_ref("Room"), "since": schema_ref("StreamPosition"), "id": op_id() })),
        "UnsubscribeOp": frame("op", "unsubscribe", "Leave a room.", &["room"],
            json!({ "room": schema_ref("Room"), "id": op_id() })),
        "LocationOp": frame("op", "location",
            "A partner's GPS fix for an order it carries (partners only; rate-limited), published \
             to `order:{order_id}` as `partner.location`.",
            &["order_id", "lat", "lng"],
            json!({
                "order_id": { "type": "string", "pattern": format!("^{ID}$") },
                "lat": { "type": "number", "minimum": -90, "maximum": 90 },
                "lng": { "type": "number", "minimum": -180, "maximum": 180 },
                "heading": { "type": "number", "minimum": 0, "maximum": 360 },
                "speed": { "type": "number", "minimum": 0 },
                "ts": { "type": "integer", "format": "int64", "description": "Device time, ms since the Unix epoch." },
                "id": op_id(),
            })),
        "PingOp": frame("op", "ping", "Answered with `ok`.", &[], json!({ "id": op_id() })),
        "RefreshOp": frame("op", "refresh",
            "A fresh token for the same `sub` and `role`: the connection then ends at its `exp`. \
             An invalid token is `forbidden` (the connection stays); one for another user or role \
             is `forbidden` and close 4500.",
            &["token"],
            json!({ "token": { "type": "string", "minLength": 1 }, "id": op_id() })),
        "SendOp": frame("op", "send",
            "A chat message to an order room (its customer, its assigned partner, admins). \
             Answered `ok` with the stored `message` once it is durable; every member then gets \
             `chat.message`. The same `client_msg_id` again (a retry after a lost reply) answers \
             the first message and publishes nothing. `text`: control characters other than \
             newline and tab are `bad_request`; trimmed and NFC-normalized, 1 to 2,000 \
             characters. Not a member, or the chat closed: `forbidden`; over \
             `SWITCHYARD_CHAT_RATE`: `rate_limited`.",
            &["room", "text", "client_msg_id"],
            json!({
                "room": room_of(&["order"]),
                "text": { "type": "string" },
                "client_msg_id": { "type": "string", "pattern": "^[!-~]{1,64}$" },
                "id": op_id(),
            })),
        "TypingOp": frame("op", "typing",
            "The sender is typing in an order room it joined: `chat.typing` to its members, at \
             most one per connection and room every 2 s (the rest are answered and dropped).",
            &["room"],
            json!({ "room": room_of(&["order"]), "id": op_id() })),
        "ReadOp": frame("op", "read",
            "The sender has read the order's chat up to `message_id` (stored; never moves back): \
             `chat.read` to the members when it moved.",
            &["room", "message_id"],
            json!({
                "room": room_of(&["order"]),
                "message_id": { "type": "string", "pattern": "^[1-9][0-9]{0,17}$" },
                "id": op_id(),
            })),
        "OrderSnapshot": {
            "description": "An order room's subscribe snapshot: the order, and the subscriber's \
                            read state of its chat.",
            "allOf": [schema_ref("Order"), {
                "type": "object",
                "properties": { "chat": schema_ref("ChatState") },
            }],
        },
        "Welcome": frame("type", "welcome",
            "The first frame: who the connection is, its own `user:{sub}` room (already joined) \
             and that room's stream position.",
            &["conn", "sub", "role", "rooms", "positions"],
            json!({
                "conn": { "type": "string", "description": "The connection's id, for support and logs." },
                "sub": { "type": "string", "pattern": format!("^{ID}$") },
                "role": schema_ref("Role"),
                "rooms": { "type": "array", "items": schema_ref("Room") },
                "positions": {
                    "type": "object",
                    "propertyNames": { "pattern": room::PATTERN },
                    "additionalProperties": schema_ref("StreamPosition"),
                },
                "recovered": { "type": "boolean", "description": "With the handshake's `since`: whether the user room was recovered (the missed events follow)." },
            })),
        "Ok": frame("type", "ok",
            "An op succeeded. A subscribe reply carries the room's `position` when joined and, \
             unless the recovery was complete, its `snapshot`: the order for `order:{id}`, the \
             product for `product:{sku}` (`null`: no such product), the revenue totals for \
             `admin:revenue`, the partners online with their last known positions for \
             `admin:fleet`, `null` for `user:{id}`, `admin:inventory` and `admin:orders`. A \
             `send` reply carries the stored `message`.",
            &["op"],
            json!({
                "id": op_id(),
                "op": schema_ref("OpName"),
                "room": schema_ref("Room"),
                "position": schema_ref("StreamPosition"),
                "recovered": { "type": "boolean" },
                "snapshot": { "anyOf": [schema_ref("OrderSnapshot"), schema_ref("Product"), schema_ref("Revenue"), schema_ref("FleetSnapshot"), { "type": "null" }] },
                "message": schema_ref("ChatMessage"),
                "presence": {
                    "type": "array",
                    "items": schema_ref("Present"),
                    "description": "With the snapshot of a room with presence (`order:{id}`, \
                        `admin:fleet`): the users present, once each, ordered by `sub`.",
                },
            })),
        "Error": frame("type", "error",
            "An op failed (or a frame could not be decoded: then without `id`): the one error \
             shape in a frame. `code` repeats `error` (its old name; deprecated, sent by this \
             release only). The connection stays open.",
            &["error", "message"],
            json!({
                "id": op_id(),
                "error": schema_ref("ErrorCode"),
                "message": { "type": "string" },
                "code": { "allOf": [schema_ref("ErrorCode")], "deprecated": true },
            })),
        "Revoked": frame("type", "revoked",
            "The server ended this connection's subscription to `room` (e.g. the order was \
             reassigned to another partner). It may not be joined again.",
            &["room", "reason"],
            json!({ "room": schema_ref("Room"), "reason": { "type": "string" } })),
        "Gap": frame("type", "gap",
            "Events of `room` may have been lost on the way (the gateway's bus connection \
             dropped). The subscription stays; resubscribe with `since` to recover.",
            &["room"],
            json!({ "room": schema_ref("Room") })),
        "OrderCreatedEvent": event_frame::<OrderCreated>(&["user", "admin:orders"]),
        "OrderStatusEvent": event_frame::<OrderStatusChanged>(&["order", "user", "admin:orders"]),
        "OrderAssignedEvent": event_frame::<OrderAssigned>(&["order", "user", "admin:orders"]),
        "OrderPaidEvent": event_frame::<OrderPaid>(&["order", "user", "admin:orders"]),
        "OrderRefundedEvent": event_frame::<OrderRefunded>(&["order", "user", "admin:orders"]),
        "RevenueUpdatedEvent": event_frame::<RevenueUpdated>(&["admin:revenue"]),
        "PresenceJoinEvent": event_frame::<PresenceJoin>(&["order", "admin:fleet"]),
        "PresenceLeaveEvent": event_frame::<PresenceLeave>(&["order", "admin:fleet"]),
        "PartnerLocationEvent": event_frame::<PartnerLocation>(&["order", "admin:fleet"]),
        "StockUpdatedEvent": event_frame::<StockUpdated>(&["product", "admin:inventory"]),
        "StockLowEvent": event_frame::<StockLow>(&["admin:inventory"]),
        "StockOutEvent": event_frame::<StockOut>(&["admin:inventory"]),
        "ChatMessageEvent": event_frame::<ChatMessage>(&["order"]),
        "ChatTypingEvent": event_frame::<ChatTyping>(&["order"]),
        "ChatReadEvent": event_frame::<ChatRead>(&["order"]),
        "ServiceEvent": frame("type", "event",
            "An event a backend service published (`POST /api/publish`): any name outside the \
             reserved families `order.*`, `revenue.*`, `partner.*`, `stock.*`, `chat.*`, `presence.*`, `data` any JSON object.",
            &["room", "event", "offset", "data"],
            json!({
                "room": schema_ref("Room"),
                "event": { "type": "string", "pattern": "^(?!order\\.|revenue\\.|partner\\.|stock\\.|chat\\.|presence\\.)[a-z][a-z0-9_.-]{0,63}$" },
                "offset": { "type": "integer", "minimum": 1 },
                "epoch": event_epoch(),
                "data": { "type": "object" },
            })),
    });
    if let Value::Object(envelopes) = envelopes {
        schemas.extend(envelopes);
    }

    let messages = json!({
        "subscribe": message("subscribe", "Subscribe", "Join a room (recover with `since`).", "SubscribeOp",
            json!({ "op": "subscribe", "room": "order:42", "since": { "epoch": "m4k2x9", "offset": 7 }, "id": 1 })),
        "unsubscribe": message("unsubscribe", "Unsubscribe", "Leave a room.", "UnsubscribeOp",
            json!({ "op": "unsubscribe", "room": "order:42", "id": 2 })),
        "location": message("location", "Location", "A partner's GPS fix.", "LocationOp",
            json!({ "op": "location", "order_id": "42", "lat": 12.9716, "lng": 77.5946, "heading": 90, "speed": 8.5, "ts": 1_732_000_000_000_i64, "id": 3 })),
        "ping": message("ping", "Ping", "Answered with ok.", "PingOp", json!({ "op": "ping", "id": 4 })),
        "refresh": message("refresh", "Refresh", "A fresh token for the same user.", "RefreshOp",
            json!({ "op": "refresh", "token": "<a fresh JWT>", "id": 5 })),
        "send": message("send", "Send", "A chat message to an order room.", "SendOp",
            json!({ "op": "send", "room": "order:42", "text": "at the gate", "client_msg_id": "9b2f0c1e-7d4a-4c51-9d1e-2f8f5a1c3b7e", "id": 7 })),
        "typing": message("typing", "Typing", "The sender is typing.", "TypingOp",
            json!({ "op": "typing", "room": "order:42", "id": 8 })),
        "read": message("read", "Read", "The sender read the chat up to a message.", "ReadOp",
            json!({ "op": "read", "room": "order:42", "message_id": "17", "id": 9 })),
        "welcome": message("welcome", "Welcome", "The first frame.", "Welcome",
            json!({ "type": "welcome", "conn": "5f3a9c1e-1", "sub": "c1", "role": "customer", "rooms": ["user:c1"], "positions": { "user:c1": { "epoch": "m4k2x9", "offset": 12 } } })),
        "ok": message("ok", "Ok", "An op succeeded.", "Ok",
            json!({ "type": "ok", "id": 1, "op": "subscribe", "room": "admin:revenue", "position": { "epoch": "m4k2x9", "offset": 3 }, "snapshot": { "currency": "INR", "total_paise": 13000, "paid_orders": 1 } })),
        "error": message("error", "Error", "An op failed.", "Error",
            json!({ "type": "error", "id": 1, "error": "forbidden", "message": "not allowed to join this room", "code": "forbidden" })),
        "revoked": message("revoked", "Revoked", "A subscription ended by the server.", "Revoked",
            json!({ "type": "revoked", "room": "order:42", "reason": "the order was reassigned to another partner" })),
        "gap": message("gap", "Gap", "Events may have been lost: recover.", "Gap",
            json!({ "type": "gap", "room": "order:42" })),
        "orderCreated": message("orderCreated", "order.created", "A customer placed an order.", "OrderCreatedEvent",
            json!({ "type": "event", "room": "user:c1", "event": "order.created", "offset": 1, "data": { "event_id": 1, "id": "42", "customer": "c1", "partner": null, "status": "placed", "items": [{ "sku": "milk-1l", "name": "Toned milk, 1 l", "qty": 2, "unit_price_paise": 6500 }], "address": "12 MG Road", "total_paise": 13000, "paid": false, "refunded": false, "created_at": 1_795_334_318_585_i64, "updated_at": 1_795_334_318_585_i64, "last_location": null } })),
        "orderStatus": message("orderStatus", "order.status", "An order's status changed.", "OrderStatusEvent",
            json!({ "type": "event", "room": "order:42", "event": "order.status", "offset": 2, "data": { "event_id": 2, "order_id": "42", "status": "confirmed", "previous": "placed", "by": "admin", "updated_at": 1_795_334_320_000_i64 } })),
        "orderAssigned": message("orderAssigned", "order.assigned", "A partner was assigned.", "OrderAssignedEvent",
            json!({ "type": "event", "room": "order:42", "event": "order.assigned", "offset": 3, "data": { "event_id": 3, "order_id": "42", "partner": "p7", "previous_partner": null, "updated_at": 1_795_334_321_000_i64 } })),
        "orderPaid": message("orderPaid", "order.paid", "An order was paid.", "OrderPaidEvent",
            json!({ "type": "event", "room": "order:42", "event": "order.paid", "offset": 4, "data": { "event_id": 4, "payment_id": "9", "order_id": "42", "amount_paise": 13000, "paid_at": 1_795_334_322_000_i64 } })),
        "orderRefunded": message("orderRefunded", "order.refunded", "A paid order was cancelled and refunded.", "OrderRefundedEvent",
            json!({ "type": "event", "room": "user:c1", "event": "order.refunded", "offset": 5, "data": { "event_id": 5, "refund_id": "1", "payment_id": "9", "order_id": "42", "amount_paise": 13000, "refunded_at": 1_795_334_323_000_i64 } })),
        "revenueUpdated": message("revenueUpdated", "revenue.updated", "The revenue totals moved.", "RevenueUpdatedEvent",
            json!({ "type": "event", "room": "admin:revenue", "event": "revenue.updated", "offset": 7, "data": { "event_id": 6, "currency": "INR", "total_paise": 13000, "paid_orders": 1, "payment": { "payment_id": "9", "order_id": "42", "amount_paise": 13000, "paid_at": 1_795_334_322_000_i64 } } })),
        "partnerLocation": message("partnerLocation", "partner.location", "The assigned partner's position.", "PartnerLocationEvent",
            json!({ "type": "event", "room": "order:42", "event": "partner.location", "offset": 8, "data": { "order_id": "42", "partner": "p7", "lat": 12.97, "lng": 77.59, "heading": 90.0, "speed": 8.5, "received_at": 1_795_334_324_000_i64 } })),
        "stockUpdated": message("stockUpdated", "stock.updated", "A product's stock changed (an order, a cancellation, an admin write). Latest-value in `product:{sku}`; every one in `admin:inventory`.", "StockUpdatedEvent",
            json!({ "type": "event", "room": "product:milk-1l", "event": "stock.updated", "offset": 12, "data": { "event_id": 31, "sku": "milk-1l", "stock": 41, "updated_at": 1_795_334_325_000_i64 } })),
        "stockLow": message("stockLow", "stock.low", "A product's stock fell to the low-stock threshold.", "StockLowEvent",
            json!({ "type": "event", "room": "admin:inventory", "event": "stock.low", "offset": 13, "data": { "event_id": 32, "sku": "milk-1l", "stock": 9, "updated_at": 1_795_334_326_000_i64, "threshold": 10 } })),
        "stockOut": message("stockOut", "stock.out", "A product ran out.", "StockOutEvent",
            json!({ "type": "event", "room": "admin:inventory", "event": "stock.out", "offset": 14, "data": { "event_id": 33, "sku": "milk-1l", "stock": 0, "updated_at": 1_795_334_327_000_i64 } })),
        "chatMessage": message("chatMessage", "chat.message", "A message in the order's chat, as stored.", "ChatMessageEvent",
            json!({ "type": "event", "room": "order:42", "event": "chat.message", "offset": 10, "data": { "event_id": 40, "message_id": "17", "order_id": "42", "from": "c1", "role": "customer", "text": "at the gate", "client_msg_id": "9b2f0c1e-7d4a-4c51-9d1e-2f8f5a1c3b7e", "sent_at": 1_795_334_328_000_i64 } })),
        "chatTyping": message("chatTyping", "chat.typing", "A member is typing (never stored; latest value).", "ChatTypingEvent",
            json!({ "type": "event", "room": "order:42", "event": "chat.typing", "offset": 11, "data": { "order_id": "42", "from": "p7", "role": "partner" } })),
        "chatRead": message("chatRead", "chat.read", "A member read the chat up to a message.", "ChatReadEvent",
            json!({ "type": "event", "room": "order:42", "event": "chat.read", "offset": 12, "data": { "event_id": 41, "order_id": "42", "from": "p7", "message_id": "17" } })),
        "presenceJoin": message("presenceJoin", "presence.join", "A user is present in the room now (its first connection in it, on any gateway).", "PresenceJoinEvent",
            json!({ "type": "event", "room": "order:42", "event": "presence.join", "offset": 10, "data": { "sub": "p7", "role": "partner" } })),
        "presenceLeave": message("presenceLeave", "presence.leave", "A user left the room (its last connection left, or its gateway died) and did not come back within the debounce.", "PresenceLeaveEvent",
            json!({ "type": "event", "room": "order:42", "event": "presence.leave", "offset": 11, "data": { "sub": "p7", "role": "partner" } })),
        "serviceEvent": message("serviceEvent", "A service's event", "An event a backend service published.", "ServiceEvent",
            json!({ "type": "event", "room": "order:42", "event": "eta.updated", "offset": 9, "data": { "eta_s": 300 } })),
    });

    let room_channel = |address: &str,
                        title: &str,
                        description: &str,
                        events: &[&str],
                        parameter: Option<&str>| {
        let mut channel = json!({
            "address": address,
            "title": title,
            "description": description,
            "messages": events.iter().map(|e| (e.to_string(), message_ref(e))).collect::<Map<String, Value>>(),
        });
        if let Some(parameter) = parameter {
            channel["parameters"] = json!({ "id": { "description": parameter } });
        }
        channel
    };
    let socket_messages = [
        "subscribe",
        "unsubscribe",
        "location",
        "ping",
        "refresh",
        "send",
        "typing",
        "read",
        "welcome",
        "ok",
        "error",
        "revoked",
        "gap",
    ];
    let channels = json!({
        "socket": {
            "address": "/ws",
            "title": "A WebSocket connection",
            "description": SOCKET,
            "messages": socket_messages.iter().map(|m| (m.to_string(), message_ref(m))).collect::<Map<String, Value>>(),
            "bindings": { "ws": {
                "method": "GET",
                "query": { "type": "object", "properties": {
                    "access_token": { "type": "string", "description": "The token, when neither the header nor the subprotocol can carry it (never logged)." },
                    "since": { "type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}(:|%3A|%3a)[0-9]+$", "description": "`<epoch>:<offset>`: recover the user room in the welcome." },
                } },
                "headers": { "type": "object", "properties": {
                    "Authorization": { "type": "string", "pattern": "^Bearer .+$" },
                    "Sec-WebSocket-Protocol": { "type": "string", "description": "`switchyard.v1`, and for browsers `bearer.<jwt>` as a second entry." },
                } },
            } },
            "x-close-codes": close_codes(),
        },
        "userRoom": room_channel("user:{id}", "A user's room",
            "Every connection is in its own `user:{sub}` room from the handshake. Who may join: \
             the user whose `sub` is the id, or an admin.",
            &["orderCreated", "orderStatus", "orderAssigned", "orderPaid", "orderRefunded", "serviceEvent"],
            Some("The user's `sub`: 1 to 64 of A-Z, a-z, 0-9, `_`, `-`.")),
        "orderRoom": room_channel("order:{id}", "An order's room",
            "Who may join: the order's customer, its currently assigned partner, or an admin (an \
             unknown order is refused exactly like someone else's). A partner reassigned away \
             gets `revoked`.",
            &["orderStatus", "orderAssigned", "orderPaid", "orderRefunded", "partnerLocation", "chatMessage", "chatTyping", "chatRead", "presenceJoin", "presenceLeave", "serviceEvent"],
            Some("The order's id, canonical decimal (`42`, never `042`).")),
        "adminRevenue": room_channel("admin:revenue", "The revenue ticker",
            "Who may join: admins only.",
            &["revenueUpdated", "serviceEvent"],
            None),
        "productRoom": room_channel("product:{id}", "A product's live stock",
            "Who may join: anyone signed in. The subscribe snapshot is the product \
             (`GET /api/products/{sku}`).",
            &["stockUpdated", "serviceEvent"],
            Some("The product's SKU: 1 to 64 of A-Z, a-z, 0-9, `_`, `-`.")),
        "adminInventory": room_channel("admin:inventory", "The inventory feed",
            "Who may join: admins only. Every stock change of every product, and the alerts: \
             `stock.low` when a product's stock falls to `SWITCHYARD_LOW_STOCK_THRESHOLD` \
             from above, `stock.out` when it reaches zero.",
            &["stockUpdated", "stockLow", "stockOut", "serviceEvent"],
            None),
        "adminOrders": room_channel("admin:orders", "The order feed",
            "Who may join: admins only. Every order as it is placed (`order.created`) and every \
             change of every order, through the outbox like every API event. The subscribe \
             snapshot is `null`: the orders are `GET /api/orders`; join first, then read them.",
            &["orderCreated", "orderStatus", "orderAssigned", "orderPaid", "orderRefunded", "serviceEvent"],
            None),
        "adminFleet": room_channel("admin:fleet", "The fleet map",
            "Who may join: admins only. Every partner's presence — a partner is present while it \
             has a connection on any gateway (`presence.join` / `presence.leave`, debounced and \
             crash-safe like an order room's) — and each active partner's newest position as \
             `partner.location` with the order it serves: at most one per partner per second \
             whatever the partner sends (the newest fix of the second wins; order rooms keep \
             their own rate). In a slow connection's queue a newer position replaces only the \
             same partner's. The subscribe snapshot (`FleetSnapshot`) lists the partners online \
             with their last known positions; `presence` lists them too.",
            &["partnerLocation", "presenceJoin", "presenceLeave", "serviceEvent"],
            None),
    });

    let mut operations = Map::new();
    for (op, summary) in [
        (
            "subscribe",
            "Join a room; the reply carries its position and snapshot, or the recovery.",
        ),
        ("unsubscribe", "Leave a room."),
        (
            "location",
            "Accept a partner's position for an order it carries.",
        ),
        ("ping", "Answer a ping."),
        ("refresh", "Extend the connection with a fresh token."),
        (
            "send",
            "Store a chat message and publish it to the order room.",
        ),
        (
            "typing",
            "Tell the order room's members the sender is typing.",
        ),
        ("read", "Move the sender's read marker in the order's chat."),
    ] {
        operations.insert(
            format!("receive{}{}", op[..1].to_uppercase(), &op[1..]),
            json!({
                "action": "receive",
                "channel": { "$ref": "#/channels/socket" },
                "summary": summary,
                "messages": [channel_message_ref("socket", op)],
                "reply": {
                    "channel": { "$ref": "#/channels/socket" },
                    "messages": [channel_message_ref("socket", "ok"), channel_message_ref("socket", "error")],
                },
            }),
        );
    }
    for (name, summary, message) in [
        (
            "sendWelcome",
            "The first frame of every connection.",
            "welcome",
        ),
        ("sendRevoked", "End a subscription.", "revoked"),
        (
            "sendGap",
            "Tell the members of a room that events may have been lost.",
            "gap",
        ),
    ] {
        operations.insert(
            name.to_owned(),
            json!({
                "action": "send",
                "channel": { "$ref": "#/channels/socket" },
                "summary": summary,
                "messages": [channel_message_ref("socket", message)],
            }),
        );
    }
    for (name, channel) in [
        ("sendUserRoomEvents", "userRoom"),
        ("sendOrderRoomEvents", "orderRoom"),
        ("sendRevenueEvents", "adminRevenue"),
        ("sendProductRoomEvents", "productRoom"),
        ("sendInventoryEvents", "adminInventory"),
        ("sendOrderFeedEvents", "adminOrders"),
    ] {
        let refs: Vec<Value> = channels[channel]["messages"]
            .as_object()
            .map(|m| m.keys().map(|k| channel_message_ref(channel, k)).collect())
            .unwrap_or_default();
        operations.insert(
            name.to_owned(),
            json!({
                "action": "send",
                "channel": { "$ref": format!("#/channels/{channel}") },
                "summary": "Deliver the room's events, in offset order, to every member.",
                "messages": refs,
            }),
        );
    }

    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Switchyard WebSocket protocol",
            "version": "1",
            "description": "The real-time side of Switchyard: clients authenticate with a JWT \
                during the handshake, join rooms and receive every change the REST API makes \
                (`/api/openapi.json`). Generated from the protocol crate's types \
                (`protocol/src/asyncapi.rs`); the prose contract is `protocol/README.md`.",
            "license": { "name": "MIT OR Apache-2.0" },
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:8080",
                "pathname": "/ws",
                "protocol": "ws",
                "description": "`switchyard all` on its default address.",
                "security": [
                    { "$ref": "#/components/securitySchemes/bearer" },
                    { "$ref": "#/components/securitySchemes/subprotocol" },
                    { "$ref": "#/components/securitySchemes/queryToken" },
                ],
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "`Authorization: Bearer <jwt>` (roles customer, partner, admin; service tokens cannot open a socket)." },
                "subprotocol": { "type": "httpApiKey", "name": "Sec-WebSocket-Protocol", "in": "header",
                    "description": "Browsers: `switchyard.v1, bearer.<jwt>`." },
                "queryToken": { "type": "httpApiKey", "name": "access_token", "in": "query",
                    "description": "`?access_token=<jwt>` (never logged)." },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` of the document names something in it.
    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let mut refs = Vec::new();
        fn walk(v: &Value, refs: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        refs.push(r.clone());
                    }
                    m.values().for_each(|v| walk(v, refs));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, refs)),
                _ => {}
            }
        }
        walk(&doc, &mut refs);
        assert!(refs.len() > 50);
        for r in refs {
            let pointer = r.trim_start_matches('#');
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
    }
}
