//! WebSocket close codes the gateway uses, and what a client should do on each.
//!
//! | code | meaning | client should |
//! |------|---------|---------------|
//! | 1000 | normal closure (the client asked) | nothing |
//! | 1001 | server shutting down / draining | reconnect (to another instance) with backoff |
//! | 1002 | WebSocket protocol error (bad framing, unmasked client frame) | fix the client |
//! | 1007 | a text frame was not valid UTF-8 | fix the client; do not reconnect blindly |
//! | 1008 | policy violation (e.g. a token whose `sub` cannot name a room) | fix the token |
//! | 1009 | frame or message larger than the configured limit | fix the client |
//! | 1011 | internal server error | reconnect with backoff |
//! | 4001 | token expired | get a fresh token, then reconnect |
//! | 4002 | idle timeout: no traffic (not even pongs) within the idle window | reconnect |
//! | 4003 | slow consumer: the outbound queue overflowed | reconnect and resync (snapshot) |

pub const NORMAL: u16 = 1000;
pub const GOING_AWAY: u16 = 1001;
pub const PROTOCOL: u16 = 1002;
pub const INVALID_PAYLOAD: u16 = 1007;
pub const POLICY: u16 = 1008;
pub const TOO_BIG: u16 = 1009;
pub const INTERNAL: u16 = 1011;
pub const TOKEN_EXPIRED: u16 = 4001;
pub const IDLE_TIMEOUT: u16 = 4002;
pub const SLOW_CONSUMER: u16 = 4003;
