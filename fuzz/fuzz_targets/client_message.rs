//! `ClientMessage::decode` on arbitrary text frames (the gateway decodes only text frames,
//! so inputs that are not UTF-8 are skipped).
//!
//! - never panics (including deep nesting, huge numbers, escapes, duplicate keys);
//! - on success, exactly what the decoder validates holds:
//!   - `subscribe`/`unsubscribe`: the room is in the documented grammar and re-parses to
//!     the same `Room`;
//!   - `location`: `order_id` matches `[A-Za-z0-9_-]{1,64}`; `lat` finite in [-90, 90],
//!     `lng` finite in [-180, 180], `heading` (if any) finite in [0, 360], `speed` (if any)
//!     finite and ≥ 0; `LocationFix::validate` agrees;
//!   - the decoded fields are the ones in the JSON object (cross-checked with `serde_json::Value`);
//!   - re-encoding the decoded message as a canonical frame and decoding it again gives the
//!     same message (floats within serde_json's 1-ULP parsing tolerance);
//! - on failure, the message is non-empty and a reported `id` really appears in the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use switchyard_fuzz::{assert_room_is_safe, id_in_grammar, same_float};
use switchyard_protocol::client::{ClientMessage, ClientOp, LocationFix};
use switchyard_protocol::room::Room;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientMessage::decode(text) {
        Ok(message) => check_decoded(text, &message),
        Err(err) => {
            assert!(!err.message.is_empty(), "empty error message for {text:?}");
            if let Some(id) = err.id {
                assert!(
                    text.contains(&id.to_string()),
                    "error carries id {id} that is not in {text:?}"
                );
            }
        }
    }
});

fn check_decoded(text: &str, message: &ClientMessage) {
    match &message.op {
        ClientOp::Subscribe { room, .. } | ClientOp::Unsubscribe { room } => check_room(room),
        ClientOp::Location { order_id, fix } => {
            assert!(id_in_grammar(order_id), "accepted order_id {order_id:?}");
            check_fix(fix);
        }
        ClientOp::Ping => {}
        ClientOp::Refresh { token } => assert!(!token.is_empty(), "empty refresh token"),
    }

    // Cross-check against a generic parse of the same frame. `Value` refuses a few frames
    // the decoder accepts (e.g. an out-of-range number in an ignored field), so this is
    // skipped when it fails.
    if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(text) {
        assert_eq!(
            obj.get("op").and_then(Value::as_str),
            Some(message.op.name().as_str())
        );
        assert_eq!(
            obj.get("id").and_then(Value::as_i64),
            message.id,
            "id of {text:?}"
        );
        match &message.op {
            ClientOp::Subscribe { room, .. } | ClientOp::Unsubscribe { room } => {
                assert_eq!(obj.get("room").and_then(Value::as_str), Some(room.as_str()));
            }
            ClientOp::Location { order_id, fix } => {
                assert_eq!(
                    obj.get("order_id").and_then(Value::as_str),
                    Some(order_id.as_str())
                );
                assert_eq!(obj.get("lat").and_then(Value::as_f64), Some(fix.lat));
                assert_eq!(obj.get("lng").and_then(Value::as_f64), Some(fix.lng));
                assert_eq!(obj.get("heading").and_then(Value::as_f64), fix.heading);
                assert_eq!(obj.get("speed").and_then(Value::as_f64), fix.speed);
                assert_eq!(obj.get("ts").and_then(Value::as_i64), fix.ts);
            }
            ClientOp::Ping => {}
            ClientOp::Refresh { token } => {
                assert_eq!(obj.get("token").and_then(Value::as_str), Some(token.as_str()));
            }
        }
    }

    // Canonical re-encoding decodes to the same message.
    let canonical = encode(message);
    let again = ClientMessage::decode(&canonical)
        .unwrap_or_else(|e| panic!("canonical {canonical:?} of {text:?} refused: {e:?}"));
    assert_eq!(again.id, message.id);
    match (&message.op, &again.op) {
        (
            ClientOp::Subscribe { room: a, since: sa },
            ClientOp::Subscribe { room: b, since: sb },
        ) => {
            assert_eq!(a, b);
            assert_eq!(sa, sb);
        }
        (ClientOp::Unsubscribe { room: a }, ClientOp::Unsubscribe { room: b }) => assert_eq!(a, b),
        (
            ClientOp::Location {
                order_id: oa,
                fix: fa,
            },
            ClientOp::Location {
                order_id: ob,
                fix: fb,
            },
        ) => {
            assert_eq!(oa, ob);
            assert!(same_float(fa.lat, fb.lat), "{fa:?} vs {fb:?}");
            assert!(same_float(fa.lng, fb.lng), "{fa:?} vs {fb:?}");
            assert_eq!(fa.heading.is_some(), fb.heading.is_some());
            assert_eq!(fa.speed.is_some(), fb.speed.is_some());
            if let (Some(a), Some(b)) = (fa.heading, fb.heading) {
                assert!(same_float(a, b), "{fa:?} vs {fb:?}");
            }
            if let (Some(a), Some(b)) = (fa.speed, fb.speed) {
                assert!(same_float(a, b), "{fa:?} vs {fb:?}");
            }
            assert_eq!(fa.ts, fb.ts);
        }
        (ClientOp::Ping, ClientOp::Ping) => {}
        (ClientOp::Refresh { token: a }, ClientOp::Refresh { token: b }) => assert_eq!(a, b),
        (a, b) => panic!("op changed on re-encode: {a:?} -> {b:?}"),
    }
}

fn check_room(room: &Room) {
    assert_room_is_safe(room.as_str());
    assert_eq!(
        Room::parse(room.as_str()).as_ref(),
        Ok(room),
        "room does not re-parse"
    );
}

fn check_fix(fix: &LocationFix) {
    assert!(
        fix.lat.is_finite() && (-90.0..=90.0).contains(&fix.lat),
        "{fix:?}"
    );
    assert!(
        fix.lng.is_finite() && (-180.0..=180.0).contains(&fix.lng),
        "{fix:?}"
    );
    if let Some(h) = fix.heading {
        assert!(h.is_finite() && (0.0..=360.0).contains(&h), "{fix:?}");
    }
    if let Some(s) = fix.speed {
        assert!(s.is_finite() && s >= 0.0, "{fix:?}");
    }
    assert_eq!(fix.validate(), Ok(()), "{fix:?}");
}

/// The frame a well-behaved client would send for `message`.
fn encode(message: &ClientMessage) -> String {
    let mut frame = match &message.op {
        ClientOp::Subscribe { room, since } => {
            json!({"op": "subscribe", "room": room.as_str(), "since": since})
        }
        ClientOp::Unsubscribe { room } => json!({"op": "unsubscribe", "room": room.as_str()}),
        ClientOp::Location { order_id, fix } => json!({
            "op": "location",
            "order_id": order_id,
            "lat": fix.lat,
            "lng": fix.lng,
            "heading": fix.heading,
            "speed": fix.speed,
            "ts": fix.ts,
        }),
        ClientOp::Ping => json!({"op": "ping"}),
        ClientOp::Refresh { token } => json!({"op": "refresh", "token": token}),
    };
    if let Some(id) = message.id {
        frame["id"] = json!(id);
    }
    frame.to_string()
}
