//! Revocation records: per user, the moment their tokens were withdrawn (`POST
//! /api/users/{sub}/revoke`). Every process keeps the records it has seen in memory, so the
//! check at a handshake, a `refresh` or a REST call is a map lookup, never a round trip:
//!
//! - the process that revokes records at once and tells every other process through the
//!   bus ([`Control::RevokeUser`], which also closes the user's connections);
//! - on the Redis bus the record is also stored in Redis (a sorted set scored by the record's
//!   end), so a process that starts later, or whose subscriber missed the message while its
//!   connection was down, reads it back (see `redis::control`).
//!
//! A record ends once every token it can refuse has expired (`until`: the revocation time
//! plus the longest token lifetime), so the records are bounded by the revocations of that
//! window.

use crate::Control;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Records by user: `(revoked at, kept until)`, seconds since the Unix epoch.
#[derive(Debug, Default)]
pub struct Revocations {
    users: RwLock<HashMap<Box<str>, (u64, u64)>>,
}

impl Revocations {
    /// When `sub`'s tokens were last revoked, if that record is still kept.
    pub fn revoked_at(&self, sub: &str) -> Option<u64> {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        let (at, until) = *users.get(sub)?;
        (now_secs() < until).then_some(at)
    }

    /// Keeps the record (the latest per user); drops the ones that ended. True when it was
    /// news to this process.
    pub fn record(&self, sub: &str, at: u64, until: u64) -> bool {
        let now = now_secs();
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        users.retain(|_, (_, end)| *end > now);
        if until <= now {
            return false;
        }
        match users.get_mut(sub) {
            Some(known) if known.0 >= at => {
                known.1 = known.1.max(until);
                false
            }
            Some(known) => {
                *known = (at, until.max(known.1));
                true
            }
            None => {
                users.insert(sub.into(), (at, until));
                true
            }
        }
    }

    /// Records what a control message says, if it is a revocation.
    pub fn observe(&self, control: &Control) {
        if let Control::RevokeUser { sub, at, until } = control {
            self.record(sub, *at, *until);
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_record_is_kept_until_it_ends() {
        let r = Revocations::default();
        let now = now_secs();
        assert!(r.record("u1", now - 10, now + 100));
        assert_eq!(r.revoked_at("u1"), Some(now - 10));
        assert!(!r.record("u1", now - 20, now + 50), "older: not news");
        assert!(r.record("u1", now, now + 100));
        assert_eq!(r.revoked_at("u1"), Some(now));
        assert!(!r.record("u2", now - 500, now - 1), "already ended");
        assert_eq!(r.revoked_at("u2"), None);
        assert_eq!(r.revoked_at("u3"), None);
    }
}
