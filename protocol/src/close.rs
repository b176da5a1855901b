//! Why the gateway closes a connection — one [`Disconnect`] (code and reason) per cause,
//! modelled on centrifuge's `disconnect.go` — and the codes' meaning for a client.
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

// The codes, as a client sees them (several disconnects may share one).
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

/// Why the server closes a connection: the code a client acts on (see [`should_reconnect`])
/// and a short reason for humans (logs, debugging; at most 123 bytes, a close frame's limit).
/// Every close the gateway makes is one of the constants below — the one vocabulary shared by
/// the session, its mailbox (a kick) and the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Disconnect {
    pub code: u16,
    pub reason: &'static str,
}

impl Disconnect {
    /// A WebSocket protocol error from the client (bad framing, an unmasked frame).
    pub const PROTOCOL_ERROR: Disconnect = Disconnect::new(PROTOCOL, "protocol error");
    /// A text frame that is not UTF-8.
    pub const INVALID_UTF8: Disconnect = Disconnect::new(INVALID_PAYLOAD, "invalid UTF-8");
    /// A message over the configured limit.
    pub const MESSAGE_TOO_BIG: Disconnect = Disconnect::new(TOO_BIG, "message too big");
    /// A frame over the configured limit.
    pub const FRAME_TOO_BIG: Disconnect = Disconnect::new(TOO_BIG, "frame too big");
    /// The bus could not place the connection in its own room or read its position.
    pub const BUS_UNAVAILABLE: Disconnect = Disconnect::new(INTERNAL, "bus unavailable");
    /// The server is draining: each connection closes at its own moment of the spread.
    pub const SHUTDOWN: Disconnect = Disconnect::new(SHUTDOWN, "server shutting down");
    /// The token's `exp` passed without a `refresh`.
    pub const TOKEN_EXPIRED: Disconnect = Disconnect::new(TOKEN_EXPIRED, "token expired");
    /// Nothing received (not even a pong) within the idle window.
    pub const IDLE: Disconnect = Disconnect::new(IDLE_TIMEOUT, "idle timeout");
    /// An ordered event did not fit the outbound queue, or a write blocked too long.
    pub const SLOW: Disconnect = Disconnect::new(SLOW_CONSUMER, "slow consumer");
    /// A `refresh` with a token for another user or role.
    pub const REFRESH_MISMATCH: Disconnect =
        Disconnect::new(POLICY_VIOLATION, "refresh for another user or role");
    /// Pings (or pongs) beyond their budget.
    pub const PING_FLOOD: Disconnect = Disconnect::new(POLICY_VIOLATION, "too many pings");
    /// The user's access was withdrawn (`POST /api/users/{sub}/revoke`).
    pub const REVOKED: Disconnect = Disconnect::new(REVOKED, "access revoked");

    pub const fn new(code: u16, reason: &'static str) -> Disconnect {
        Disconnect { code, reason }
    }

    /// Whether the client should reconnect (and recover) after this.
    pub fn reconnect(self) -> bool {
        should_reconnect(self.code)
    }

    /// Which of two pending disconnects a connection closes with: a final one (do not
    /// reconnect) over one that reconnects, and one that closes now over the drain's, which
    /// only schedules the close. So a revocation always wins — over a full queue, a slow
    /// write or a drain in progress.
    pub fn outranks(self, other: Disconnect) -> bool {
        let rank = |d: Disconnect| match d {
            d if !d.reconnect() => 2,
            Disconnect::SHUTDOWN => 0,
            _ => 1,
        };
        rank(self) > rank(other)
    }
}

impl std::fmt::Display for Disconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.code, self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_final_disconnect_outranks_the_others_and_the_drain_is_outranked_by_all() {
        use Disconnect as D;
        assert!(D::REVOKED.outranks(D::SLOW));
        assert!(D::REVOKED.outranks(D::SHUTDOWN));
        assert!(D::SLOW.outranks(D::SHUTDOWN));
        assert!(!D::SLOW.outranks(D::REVOKED));
        assert!(!D::SHUTDOWN.outranks(D::SLOW));
        assert!(!D::SLOW.outranks(D::IDLE), "equals keep the first");
        for d in [D::PROTOCOL_ERROR, D::REFRESH_MISMATCH, D::PING_FLOOD] {
            assert!(d.reason.len() <= 123 && !d.reconnect(), "{d}");
        }
    }

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
