//! WebSocket close codes the gateway uses, and what a client should do on each.
//!
//! Switchyard's own codes follow one rule a client can apply without a table:
//! **4000–4499: reconnect (with backoff) and recover** with `since`; **4500–4999: do not
//! reconnect** until something changes (a new token, a fixed client). The 1xxx codes are
//! RFC 6455's and mean what the RFC says.
//!
//! | code | meaning | client should |
//! |------|---------|---------------|
//! | 1000 | normal closure (the client asked) | nothing |
//! | 1002 | WebSocket protocol error (bad framing, unmasked client frame) | fix the client |
//! | 1007 | a text frame was not valid UTF-8 | fix the client |
//! | 1009 | frame or message larger than the configured limit | fix the client |
//! | 1011 | internal server error | reconnect with backoff |
//! | 4000 | server shutting down (drain); closes are spread over a window | reconnect (another instance answers) and recover |
//! | 4001 | token expired (and no `refresh` arrived in time) | get a fresh token, reconnect, recover |
//! | 4002 | idle: no traffic, not even pongs, within the idle window | reconnect and recover |
//! | 4003 | slow consumer: an ordered event did not fit the outbound queue | reconnect and recover |
//! | 4500 | policy violation (a `refresh` for another user, a ping flood) | do not reconnect; fix the client or token |
//! | 4501 | revoked: the user's access was withdrawn | do not reconnect with the same token |

pub const NORMAL: u16 = 1000;
pub const PROTOCOL: u16 = 1002;
pub const INVALID_PAYLOAD: u16 = 1007;
pub const TOO_BIG: u16 = 1009;
pub const INTERNAL: u16 = 1011;
pub const SHUTDOWN: u16 = 4000;
pub const TOKEN_EXPIRED: u16 = 4001;
pub const IDLE_TIMEOUT: u16 = 4002;
pub const SLOW_CONSUMER: u16 = 4003;
pub const POLICY_VIOLATION: u16 = 4500;
pub const REVOKED: u16 = 4501;

/// Whether a client should reconnect after `code` (and recover with `since`).
pub fn should_reconnect(code: u16) -> bool {
    matches!(code, 1001 | 1006 | 1011 | 1012 | 1013 | 4000..=4499)
}

/// The close frame's reason text for a Switchyard code.
pub fn reason(code: u16) -> &'static str {
    match code {
        NORMAL => "bye",
        PROTOCOL => "protocol error",
        INVALID_PAYLOAD => "invalid UTF-8",
        TOO_BIG => "message too big",
        INTERNAL => "internal error",
        SHUTDOWN => "server shutting down",
        TOKEN_EXPIRED => "token expired",
        IDLE_TIMEOUT => "idle timeout",
        SLOW_CONSUMER => "slow consumer",
        POLICY_VIOLATION => "policy violation",
        REVOKED => "access revoked",
        _ => "closed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_say_whether_to_reconnect() {
        for code in [
            SHUTDOWN,
            TOKEN_EXPIRED,
            IDLE_TIMEOUT,
            SLOW_CONSUMER,
            INTERNAL,
        ] {
            assert!(should_reconnect(code), "{code}");
        }
        for code in [
            POLICY_VIOLATION,
            REVOKED,
            PROTOCOL,
            INVALID_PAYLOAD,
            TOO_BIG,
            NORMAL,
        ] {
            assert!(!should_reconnect(code), "{code}");
        }
    }
}
