//! Where a client may put its token.

use switchyard_protocol::{BEARER_SUBPROTOCOL_PREFIX, SUBPROTOCOL};

/// The token in an `Authorization: Bearer <jwt>` header value, if the scheme matches.
pub fn from_authorization(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// What a `Sec-WebSocket-Protocol` offer says: whether `switchyard.v1` was offered,
/// and the token from a `bearer.<jwt>` entry.
pub fn from_subprotocols<'a>(offers: impl Iterator<Item = &'a str>) -> (bool, Option<&'a str>) {
    let mut wants_v1 = false;
    let mut token = None;
    for offer in offers.flat_map(|v| v.split(',')).map(str::trim) {
        if offer == SUBPROTOCOL {
            wants_v1 = true;
        } else if let Some(t) = offer.strip_prefix(BEARER_SUBPROTOCOL_PREFIX) {
            token = Some(t);
        }
    }
    (wants_v1, token)
}

/// The `access_token` parameter of a query string, if present. Tokens are base64url and
/// dots, so no percent-decoding is needed for a well-formed one.
pub fn from_query(query: &str) -> Option<&str> {
    query_param(query, "access_token")
}

/// The raw (not percent-decoded) value of the first `key=` parameter of a query string.
pub fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(from_authorization("Bearer abc"), Some("abc"));
        assert_eq!(from_authorization("bearer  abc "), Some("abc"));
        assert_eq!(from_authorization("Basic abc"), None);
        assert_eq!(
            from_subprotocols(["switchyard.v1, bearer.x.y.z"].into_iter()),
            (true, Some("x.y.z"))
        );
        assert_eq!(from_subprotocols(["chat"].into_iter()), (false, None));
        assert_eq!(from_query("a=1&access_token=t.k.n"), Some("t.k.n"));
        assert_eq!(from_query("a=1"), None);
    }
}
