//! The `chat.typing` throttle: at most one per user and order room every interval
//! (`SWITCHYARD_CHAT_TYPING_INTERVAL_MS`, default [`TYPING_INTERVAL`]), whichever of the
//! user's connections types.
//!
//! Two gates, both must let it through: [`TypingGate`], this gateway's (a map under a
//! `std::sync::Mutex` held for one lookup, never across an `.await`), then the backend's
//! cross-gateway claim ([`crate::backend::Backend::typing_turn`]; in the distributed mode one
//! `SET … NX PX` in Redis, so a user typing on two gateways is forwarded once per interval;
//! in the embedded mode there is one gateway and the claim always succeeds).

use std::collections::HashMap;
use std::sync::Mutex;
use switchyard_protocol::Room;
use tokio::time::{Duration, Instant};

/// The default interval: at most one `chat.typing` per user and room in it.
pub const TYPING_INTERVAL: Duration = Duration::from_secs(2);

/// Fewest entries before expired ones are swept (then: twice what was left).
const SWEEP_AT: usize = 1_024;

/// When each user was last shown typing in each room, on this gateway.
#[derive(Default)]
pub(crate) struct TypingGate {
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    /// (room, user) → when its last `chat.typing` went out. Entries older than the interval
    /// are swept once the map reaches `sweep_at`, so it holds about the users who typed
    /// within the last interval (each one needs a joined room: bounded by the connections'
    /// subscriptions).
    at: HashMap<(Room, Box<str>), Instant>,
    sweep_at: usize,
}

impl TypingGate {
    /// True when `sub` may be shown typing in `room` at `now` (recorded); false within
    /// `interval` of the last time.
    pub(crate) fn admit(&self, room: &Room, sub: &str, now: Instant, interval: Duration) -> bool {
        let mut entries = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = (room.clone(), Box::from(sub));
        if let Some(last) = entries.at.get(&key)
            && now.duration_since(*last) < interval
        {
            return false;
        }
        if entries.at.len() >= entries.sweep_at.max(SWEEP_AT) {
            entries
                .at
                .retain(|_, last| now.duration_since(*last) < interval);
            entries.sweep_at = 2 * entries.at.len();
        }
        entries.at.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn once_per_user_and_room_per_interval_and_swept() {
        let gate = TypingGate::default();
        let (a, b) = (
            Room::parse("order:1").unwrap(),
            Room::parse("order:2").unwrap(),
        );
        let t0 = Instant::now();
        assert!(gate.admit(&a, "c1", t0, TYPING_INTERVAL));
        assert!(!gate.admit(&a, "c1", t0 + Duration::from_millis(1_999), TYPING_INTERVAL));
        assert!(gate.admit(&a, "p1", t0, TYPING_INTERVAL), "another user");
        assert!(gate.admit(&b, "c1", t0, TYPING_INTERVAL), "another room");
        assert!(gate.admit(&a, "c1", t0 + TYPING_INTERVAL, TYPING_INTERVAL));
        // A new user every 10 ms for a while: expired entries are swept, the map stays bounded.
        for i in 0..3 * SWEEP_AT {
            let at = t0 + Duration::from_millis(10 * i as u64);
            assert!(gate.admit(&a, &format!("u{i}"), at, TYPING_INTERVAL));
            assert!(gate.inner.lock().unwrap().at.len() <= SWEEP_AT);
        }
    }
}
