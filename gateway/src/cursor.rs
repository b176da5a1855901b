//! What one connection's client has of one room's stream, so that the session never puts an
//! offset on the wire twice, never out of order, and never compares offsets of two epochs.
//!
//! A room's events are counted in an *epoch*; offsets start again in a new one (the room's
//! history was lost: a Redis restart, a new process). The cursor keeps, for the epoch the
//! client was last told about:
//!
//! - `head`: events up to here were written or covered by a position the client was given
//!   (a welcome, a subscribe reply); a live event goes out only above it;
//! - `floor`: every event in `(floor, head]` reached the client — written on this connection
//!   since `floor` (latest-value events may be conflated away, which is not a loss) — so a
//!   recovery from a `since` at or above `floor` can leave those out;
//! - `written`: the highest offset ever written, the bound every later write must exceed.
//!
//! A live event of another epoch is the room's new epoch (the stream per room is ordered) —
//! unless it is of the epoch this one replaced, which only happens to events that were on
//! their way while a subscribe read the new position: those are stale and dropped.

use std::sync::Arc;
use switchyard_protocol::Room;
use switchyard_protocol::client::StreamPosition;

#[derive(Debug, Default)]
pub struct Cursor {
    /// The epoch the client knows this room's offsets in; `None` until the first position.
    epoch: Option<Arc<str>>,
    /// The epoch `epoch` replaced on this connection: its late events are stale.
    previous: Option<Arc<str>>,
    floor: u64,
    head: u64,
    written: u64,
}

/// What to do with a live event.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Write the shared frame.
    Send,
    /// Write it with its epoch added: the first event the client sees in a new epoch.
    SendWithEpoch,
    /// Already covered, out of order, or stale: not written.
    Drop,
}

/// How a subscribe with `since` (or the welcome's) recovers, given what this connection
/// already wrote.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Complete: the client gets every event after `since` by writing those above this offset
    /// (the others are already on the wire).
    From(u64),
    /// Not possible without repeating or reordering what is on the wire: resync (snapshot).
    Resync,
}

impl Cursor {
    /// Whether the live event at `offset` of `epoch` goes out, and records it if so.
    pub fn admit(&mut self, epoch: &Arc<str>, offset: u64) -> Admit {
        // The bus hands every event of an epoch the same allocation: a cursor that keeps it
        // compares by address from its second event on, without reading the name (per
        // recipient and event: at thousands of sessions per event, each read is a cache miss).
        if let Some(current) = &mut self.epoch
            && !Arc::ptr_eq(current, epoch)
            && **current == **epoch
        {
            *current = epoch.clone();
        }
        match &self.epoch {
            Some(current) if Arc::ptr_eq(current, epoch) => {
                if offset <= self.head {
                    return Admit::Drop;
                }
                self.head = offset;
                self.written = offset;
                Admit::Send
            }
            _ if self.previous.as_deref() == Some(&**epoch) => Admit::Drop,
            None => Admit::Drop,
            Some(_) => {
                // The room moved to a new epoch: its offsets start again; what came before
                // this one in it never reached this connection.
                self.previous = self.epoch.replace(epoch.clone());
                self.floor = offset.saturating_sub(1);
                self.head = offset;
                self.written = offset;
                Admit::SendWithEpoch
            }
        }
    }

    /// Events of the room may have been lost on the way here (a bus gap): nothing below
    /// `head` can be assumed contiguous any more.
    pub fn gap(&mut self) {
        self.floor = self.head;
    }

    /// The client is given `position` (a welcome or a subscribe reply). With `since` and the
    /// bus able to recover from it (`available`: the epoch matches and history reaches back),
    /// says which of the recovered events to write; then the client has everything up to
    /// `position`.
    pub fn reposition(
        &mut self,
        position: &StreamPosition,
        since: Option<&StreamPosition>,
        available: bool,
    ) -> Option<Recovery> {
        if self.epoch.as_deref() != Some(position.epoch.as_str()) {
            if let Some(old) = self.epoch.replace(position.epoch.as_str().into()) {
                self.previous = Some(old);
            }
            (self.floor, self.head, self.written) = (0, 0, 0);
        }
        let recovery = since.map(|since| {
            if !available {
                Recovery::Resync
            } else if since.offset >= self.floor {
                // What is above `since` and already written is on the wire, contiguous.
                Recovery::From(since.offset.max(self.head))
            } else if self.written <= since.offset {
                // Nothing above `since` was ever written here: send all of it.
                self.floor = since.offset;
                Recovery::From(since.offset)
            } else {
                Recovery::Resync
            }
        });
        if !matches!(recovery, Some(Recovery::From(_))) {
            // A snapshot at `position`: the client's state starts there.
            self.floor = position.offset;
        }
        self.head = self.head.max(position.offset);
        recovery
    }

    /// Records recovered events written after a reply, up to `offset`.
    pub fn wrote(&mut self, offset: u64) {
        self.written = self.written.max(offset);
    }
}

/// The rooms one connection is in, each with its [`Cursor`]: a vector sorted by room name,
/// sized to what it holds. A connection is in few rooms (two for most: its user room and an
/// order's; at most `max_subscriptions`), so a binary search costs what a hash does, and two
/// rooms take 160 bytes instead of a hash map's 340 (issue #17, idle memory).
#[derive(Debug, Default)]
pub struct Joined(Vec<(Room, Cursor)>);

impl Joined {
    fn find(&self, room: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(r, _)| r.as_str().cmp(room))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains_key(&self, room: &str) -> bool {
        self.find(room).is_ok()
    }

    /// The cursor of `room`. A name that is the very allocation kept here — the hub's, which
    /// every event carries ([`crate::hub::Hub::join_shared`]) — is found by address among a
    /// few rooms, without reading a name (the per-event lookup: at thousands of sessions per
    /// event, each name read is a cache miss); any other by the binary search.
    pub fn get_mut(&mut self, room: &str) -> Option<&mut Cursor> {
        const SCAN: usize = 8;
        let i = match self
            .0
            .iter()
            .take(SCAN)
            .position(|(r, _)| std::ptr::eq(r.as_str(), room))
        {
            Some(i) => i,
            None => self.find(room).ok()?,
        };
        Some(&mut self.0[i].1)
    }

    /// Adds `room` with `cursor` (replacing the cursor if the room is there).
    pub fn insert(&mut self, room: Room, cursor: Cursor) {
        match self.find(room.as_str()) {
            Ok(i) => self.0[i].1 = cursor,
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (room, cursor));
            }
        }
    }

    /// Removes `room`; returns it with its cursor if it was there.
    pub fn remove_entry(&mut self, room: &str) -> Option<(Room, Cursor)> {
        let i = self.find(room).ok()?;
        let entry = self.0.remove(i);
        if self.0.capacity() > 2 * self.0.len() + 2 {
            self.0.shrink_to_fit();
        }
        Some(entry)
    }

    /// The rooms.
    pub fn rooms(&self) -> impl Iterator<Item = &Room> {
        self.0.iter().map(|(room, _)| room)
    }

    /// Every room, removed.
    pub fn take_rooms(&mut self) -> Vec<Room> {
        std::mem::take(&mut self.0)
            .into_iter()
            .map(|(room, _)| room)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: &str, offset: u64) -> StreamPosition {
        StreamPosition {
            epoch: epoch.into(),
            offset,
        }
    }

    fn joined(epoch: &str, offset: u64) -> Cursor {
        let mut cursor = Cursor::default();
        assert_eq!(cursor.reposition(&at(epoch, offset), None, false), None);
        cursor
    }

    #[test]
    fn live_events_go_out_once_in_order_above_the_position() {
        let e1: Arc<str> = "e1".into();
        let mut c = joined("e1", 5);
        assert_eq!(c.admit(&e1, 5), Admit::Drop, "covered by the reply");
        assert_eq!(c.admit(&e1, 6), Admit::Send);
        assert_eq!(c.admit(&e1, 6), Admit::Drop);
        assert_eq!(c.admit(&e1, 8), Admit::Send, "a conflated jump");
        assert_eq!(c.admit(&e1, 7), Admit::Drop, "never backwards");
    }

    /// Issue #17 §2: a cursor positioned by a reply (its own copy of the epoch) keeps the
    /// bus's copy from the first event on, and compares by address after; an equal name in
    /// another allocation is still the same epoch, a different name still a new one.
    #[test]
    fn a_cursor_keeps_the_events_epoch_and_still_compares_names() {
        let bus: Arc<str> = "e1".into();
        let mut c = joined("e1", 5);
        assert_eq!(c.admit(&bus, 6), Admit::Send);
        assert!(c.epoch.as_ref().is_some_and(|e| Arc::ptr_eq(e, &bus)));
        assert_eq!(c.admit(&bus, 7), Admit::Send);
        let copy: Arc<str> = "e1".into();
        assert_eq!(
            c.admit(&copy, 7),
            Admit::Drop,
            "the same epoch, already sent"
        );
        assert_eq!(c.admit(&copy, 8), Admit::Send);
        let e2: Arc<str> = "e2".into();
        assert_eq!(c.admit(&e2, 1), Admit::SendWithEpoch);
        assert_eq!(c.admit(&bus, 9), Admit::Drop, "the old epoch's late event");
    }

    #[test]
    fn a_new_epoch_is_announced_once_and_never_compared_with_the_old_offsets() {
        let (e1, e2): (Arc<str>, Arc<str>) = ("e1".into(), "e2".into());
        let mut c = joined("e1", 100);
        assert_eq!(c.admit(&e2, 1), Admit::SendWithEpoch);
        assert_eq!(c.admit(&e2, 2), Admit::Send);
        assert_eq!(
            c.admit(&e1, 101),
            Admit::Drop,
            "a late event of the old epoch"
        );
        // A reply in the new epoch changes nothing more.
        c.reposition(&at("e2", 2), None, false);
        assert_eq!(c.admit(&e2, 3), Admit::Send);
    }

    #[test]
    fn a_reply_in_a_new_epoch_makes_the_old_epochs_late_events_stale() {
        let (e1, e2): (Arc<str>, Arc<str>) = ("e1".into(), "e2".into());
        let mut c = joined("e1", 100);
        c.reposition(&at("e2", 3), None, false);
        assert_eq!(c.admit(&e1, 101), Admit::Drop);
        assert_eq!(c.admit(&e2, 3), Admit::Drop);
        assert_eq!(c.admit(&e2, 4), Admit::Send, "the reply carried the epoch");
    }

    #[test]
    fn a_recovery_leaves_out_what_is_already_on_the_wire() {
        let e1: Arc<str> = "e1".into();
        let mut c = joined("e1", 5);
        for offset in 6..=8 {
            c.admit(&e1, offset);
        }
        // The client applied up to 6; 7 and 8 are on their way to it.
        let r = c.reposition(&at("e1", 10), Some(&at("e1", 6)), true);
        assert_eq!(r, Some(Recovery::From(8)));
        assert_eq!(c.admit(&e1, 10), Admit::Drop, "recovered, not live");
        assert_eq!(c.admit(&e1, 11), Admit::Send);
    }

    #[test]
    fn a_since_below_a_position_the_client_was_given_recovers_only_when_nothing_was_written() {
        let e1: Arc<str> = "e1".into();
        // Welcomed at 10, and the client asks from 4: nothing was written yet.
        let mut c = joined("e1", 10);
        let r = c.reposition(&at("e1", 12), Some(&at("e1", 4)), true);
        assert_eq!(r, Some(Recovery::From(4)));
        c.wrote(12);
        // Welcomed at 10, then 11 was written: 5..=10 can no longer go out in order.
        let mut c = joined("e1", 10);
        c.admit(&e1, 11);
        let r = c.reposition(&at("e1", 12), Some(&at("e1", 4)), true);
        assert_eq!(r, Some(Recovery::Resync));
        assert_eq!(c.admit(&e1, 12), Admit::Drop, "covered by the snapshot");
    }

    #[test]
    fn after_a_gap_only_a_since_at_the_head_recovers() {
        let e1: Arc<str> = "e1".into();
        let gapped = || {
            let mut c = joined("e1", 5);
            c.admit(&e1, 6);
            c.admit(&e1, 9); // 7 and 8 were lost on the bus
            c.gap();
            c
        };
        assert_eq!(
            gapped().reposition(&at("e1", 9), Some(&at("e1", 6)), true),
            Some(Recovery::Resync),
            "7 and 8 cannot follow 9"
        );
        assert_eq!(
            gapped().reposition(&at("e1", 12), Some(&at("e1", 9)), true),
            Some(Recovery::From(9))
        );
    }

    #[test]
    fn history_that_cannot_recover_means_resync() {
        let mut c = joined("e1", 5);
        let r = c.reposition(&at("e1", 50), Some(&at("e1", 5)), false);
        assert_eq!(r, Some(Recovery::Resync));
        let r = c.reposition(&at("e2", 1), Some(&at("e1", 50)), false);
        assert_eq!(r, Some(Recovery::Resync));
    }

    #[test]
    fn joined_rooms_are_found_by_name_and_sized_to_what_they_hold() {
        let room = |name: &str| Room::parse(name).unwrap();
        let mut j = Joined::default();
        for name in ["user:b", "order:7", "user:a", "order:10"] {
            j.insert(room(name), Cursor::default());
        }
        j.insert(room("user:a"), joined("e1", 3));
        assert_eq!(j.len(), 4);
        // By the kept allocation (the hub's, which events carry) and by another spelling alike.
        let kept = j.rooms().find(|r| r.as_str() == "order:7").unwrap().clone();
        j.get_mut(kept.as_str()).unwrap().head = 9;
        assert_eq!(j.get_mut(&String::from("order:7")).unwrap().head, 9);
        assert!(j.get_mut("order:70").is_none());
        assert!(j.contains_key("order:7") && !j.contains_key("order:8"));
        assert_eq!(j.get_mut("user:a").unwrap().head, 3, "replaced");
        let (left, _) = j.remove_entry("order:10").unwrap();
        assert_eq!(left.as_str(), "order:10");
        assert!(j.remove_entry("order:10").is_none());
        assert_eq!(j.len(), 3);
        let mut rooms: Vec<String> = j.take_rooms().iter().map(|r| r.to_string()).collect();
        rooms.sort();
        assert_eq!(rooms, ["order:7", "user:a", "user:b"]);
        assert_eq!(j.len(), 0);
    }
}
