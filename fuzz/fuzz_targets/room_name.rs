//! `Room::parse` (and `FromStr`, the constructors, `is_valid_id`, serde) on arbitrary strings.
//!
//! - never panics;
//! - accepts exactly the names of the documented grammar (checked against an independent
//!   restatement in `src/lib.rs`), and refuses with the error the grammar implies;
//! - an accepted name round-trips: `as_str()`, `Display`, `into_string`, serde;
//!   `kind()`/`id()` agree with the prefix; `Room::user`/`Room::order` agree with the parser;
//! - anything accepted is ASCII, ≤ 70 bytes, and has no glob characters, whitespace,
//!   control bytes or non-ASCII digits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_fuzz::{assert_room_is_safe, id_in_grammar, room_in_grammar};
use switchyard_protocol::room::{Room, RoomError, RoomKind, is_valid_id};

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    check(name);
});

fn check(name: &str) {
    let parsed = Room::parse(name);
    assert_eq!(
        parsed.is_ok(),
        room_in_grammar(name),
        "Room::parse({name:?}) = {parsed:?} disagrees with the grammar"
    );
    assert_eq!(
        name.parse::<Room>(),
        parsed,
        "FromStr differs from Room::parse"
    );

    // The id rule on its own, for whatever follows the first colon (or the whole input).
    let tail = name.split_once(':').map_or(name, |(_, id)| id);
    assert_eq!(
        is_valid_id(tail),
        id_in_grammar(tail),
        "is_valid_id({tail:?})"
    );
    assert_eq!(
        is_valid_id(name),
        id_in_grammar(name),
        "is_valid_id({name:?})"
    );

    // The constructors must agree with the parser on names with their prefix.
    if let Some(id) = name.strip_prefix("user:") {
        assert_eq!(
            Room::user(id),
            parsed,
            "Room::user({id:?}) differs from parse"
        );
    } else if let Some(id) = name.strip_prefix("order:") {
        assert_eq!(
            Room::order(id),
            parsed,
            "Room::order({id:?}) differs from parse"
        );
    }

    match parsed {
        Ok(room) => {
            assert_eq!(room.as_str(), name);
            assert_eq!(room.to_string(), name);
            assert_room_is_safe(room.as_str());
            let (prefix, id) = name.split_once(':').expect("accepted room has a colon");
            assert_eq!(room.id(), id);
            let kind = match prefix {
                "user" => RoomKind::User,
                "order" => RoomKind::Order,
                "admin" => RoomKind::AdminRevenue,
                other => panic!("accepted room with prefix {other:?}"),
            };
            assert_eq!(room.kind(), kind);
            assert_eq!(
                Room::parse(room.as_str()).as_ref(),
                Ok(&room),
                "re-parse differs"
            );
            let json = serde_json::to_string(&room).expect("a room serializes");
            let back: Room = serde_json::from_str(&json).expect("a serialized room deserializes");
            assert_eq!(back, room);
            assert_eq!(room.into_string(), name);
        }
        Err(err) => {
            let id = name
                .strip_prefix("user:")
                .or_else(|| name.strip_prefix("order:"));
            match id {
                None => assert_eq!(err, RoomError::UnknownKind, "{name:?}"),
                Some("") => assert_eq!(err, RoomError::BadLength, "{name:?}"),
                // ASCII ids: characters == bytes, so the variant is fully determined.
                Some(id) if id.is_ascii() => {
                    let want = if id.len() > 64 {
                        RoomError::BadLength
                    } else {
                        RoomError::BadCharacter
                    };
                    assert_eq!(err, want, "{name:?}");
                }
                // Non-ASCII ids are refused either way; which of the two reasons wins
                // depends on bytes vs characters, and both are truthful.
                Some(_) => assert!(
                    matches!(err, RoomError::BadLength | RoomError::BadCharacter),
                    "{name:?}: {err:?}"
                ),
            }
            // Serde must refuse what the parser refuses.
            let json = serde_json::to_string(name).expect("a str serializes");
            assert!(
                serde_json::from_str::<Room>(&json).is_err(),
                "serde accepted {name:?}"
            );
        }
    }
}
