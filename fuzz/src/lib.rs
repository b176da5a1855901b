//! Independent restatements of the protocol's grammars, shared by the fuzz targets.
//!
//! These are written from the doc comments in `protocol/src/room.rs` and
//! `protocol/src/client.rs`, deliberately *not* by calling the code under test,
//! so a target can compare the real parser against a second, simpler reading.

/// `id = 1*64( ALPHA / DIGIT / "_" / "-" )`, ASCII only.
pub fn id_in_grammar(id: &str) -> bool {
    let mut n = 0usize;
    for c in id.chars() {
        if !matches!(c, 'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '-') {
            return false;
        }
        n += 1;
    }
    (1..=64).contains(&n)
}

/// `room = "user:" id | "order:" id | "admin:revenue"`.
pub fn room_in_grammar(name: &str) -> bool {
    if name == "admin:revenue" {
        return true;
    }
    match name.split_once(':') {
        Some(("user" | "order", id)) => id_in_grammar(id),
        _ => false,
    }
}

/// The properties the room.rs module docs promise for anything `Room::parse` accepts,
/// spelled out one by one (implied by the grammar, but checked separately on purpose).
pub fn assert_room_is_safe(name: &str) {
    assert!(name.is_ascii(), "accepted room {name:?} is not ASCII");
    assert!(
        name.len() <= "order:".len() + 64,
        "accepted room {name:?} is longer than 70 bytes"
    );
    for c in name.chars() {
        assert!(
            !matches!(
                c,
                '*' | '?' | '[' | ']' | '{' | '}' | '\r' | '\n' | '\0' | ' ' | '.'
            ),
            "accepted room {name:?} contains {c:?}"
        );
        assert!(
            !c.is_whitespace() && !c.is_control(),
            "accepted room {name:?} contains {c:?}"
        );
        assert!(
            !c.is_numeric() || c.is_ascii_digit(),
            "accepted room {name:?} contains a non-ASCII digit {c:?}"
        );
    }
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-:".contains(&b)),
        "accepted room {name:?} has a byte outside [A-Za-z0-9_:-]"
    );
    assert!(
        room_in_grammar(name),
        "accepted room {name:?} is outside the grammar"
    );
}

/// True when two floats are equal or one ULP apart with the same sign.
///
/// serde_json without its `float_roundtrip` feature parses decimals "best effort" and may
/// land one ULP off the shortest representation it printed, so the decode → encode →
/// decode round trip in `client_message` allows exactly that much.
pub fn same_float(a: f64, b: f64) -> bool {
    a == b
        || (a.is_sign_positive() == b.is_sign_positive() && a.to_bits().abs_diff(b.to_bits()) <= 1)
}
