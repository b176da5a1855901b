//! One room's local members: joining and leaving cost O(1) amortized, whatever the room's
//! size, and a fan-out walks a snapshot with no lock held and none taken per recipient
//! (issue #20 §3).
//!
//! The members are kept in chunks of at most [`CHUNK`], each an immutable shared slice
//! (`Arc<[Outbound]>`), under a shared list of chunks. A fan-out clones the list's `Arc` (one
//! atomic increment, under the hub's shard lock) and walks it after the lock is released.
//! A join rebuilds only the last chunk; a leave moves the last member into the hole, so it
//! rebuilds at most two chunks. The list of chunks is changed in place unless a fan-out is
//! walking it at that moment (then it is copied: a pointer per 64 members). So filling or
//! emptying a 19,000-member room costs ≈ 19,000 × (a 64-member chunk + an index update), not
//! 19,000² member copies as with one flat list rebuilt per change.
//!
//! A room that fits one chunk — nearly every room: a user's, an order's — is searched in that
//! chunk; larger rooms keep an index of where each connection sits.

use crate::outbound::Outbound;
use std::collections::HashMap;
use std::sync::Arc;

/// Members per chunk: the most a join or leave copies.
pub const CHUNK: usize = 64;

/// What a fan-out walks: every member once, chunk by chunk.
pub type Snapshot = Arc<Vec<Arc<[Outbound]>>>;

#[derive(Debug, Default)]
pub struct Members {
    chunks: Snapshot,
    /// Connection → (chunk, slot), kept once the room outgrows one chunk. Boxed: every room
    /// carries this field and nearly none uses it (8 bytes instead of a map's 48).
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<u64, (u32, u32)>>>,
    len: usize,
}

impl Members {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The members as they are now, to walk without a lock.
    pub fn snapshot(&self) -> Snapshot {
        self.chunks.clone()
    }

    fn find(&self, conn: u64) -> Option<(usize, usize)> {
        match &self.index {
            Some(index) => index.get(&conn).map(|&(c, s)| (c as usize, s as usize)),
            None => {
                let chunk = self.chunks.first()?;
                chunk.iter().position(|m| m.conn == conn).map(|s| (0, s))
            }
        }
    }

    /// Adds `member`; false if it was already there.
    pub fn insert(&mut self, member: &Outbound) -> bool {
        if self.find(member.conn).is_some() {
            return false;
        }
        let chunks = Arc::make_mut(&mut self.chunks);
        match chunks.last_mut() {
            Some(last) if last.len() < CHUNK => {
                *last = last.iter().chain([member]).cloned().collect();
            }
            _ => {
                chunks.reserve_exact(1);
                chunks.push(Arc::from([member.clone()]));
            }
        }
        self.len += 1;
        let at = (chunks.len() - 1, chunks[chunks.len() - 1].len() - 1);
        if let Some(index) = &mut self.index {
            index.insert(member.conn, (at.0 as u32, at.1 as u32));
        } else if chunks.len() > 1 {
            let mut index = HashMap::with_capacity(2 * CHUNK);
            for (c, chunk) in chunks.iter().enumerate() {
                for (s, m) in chunk.iter().enumerate() {
                    index.insert(m.conn, (c as u32, s as u32));
                }
            }
            self.index = Some(Box::new(index));
        }
        true
    }

    /// Removes connection `conn`; false if it was not there. The last member takes its place.
    pub fn remove(&mut self, conn: u64) -> bool {
        let Some((c, s)) = self.find(conn) else {
            return false;
        };
        let chunks = Arc::make_mut(&mut self.chunks);
        let last = chunks.len() - 1;
        let mut tail = chunks[last].to_vec();
        let moved = tail.pop().expect("no chunk is empty");
        if let Some(index) = &mut self.index {
            index.remove(&conn);
            if moved.conn != conn {
                index.insert(moved.conn, (c as u32, s as u32));
            }
        }
        if c == last {
            if moved.conn != conn {
                tail[s] = moved;
            }
        } else {
            let mut chunk = chunks[c].to_vec();
            chunk[s] = moved;
            chunks[c] = chunk.into();
        }
        if tail.is_empty() {
            chunks.pop();
        } else {
            chunks[last] = tail.into();
        }
        self.len -= 1;
        if chunks.len() <= 1 {
            self.index = None;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(conn: u64) -> Outbound {
        Outbound::new(conn, "u".into(), 1024, metrics::Gauge::noop(), None).0
    }

    fn conns(members: &Members) -> Vec<u64> {
        let mut all: Vec<u64> = members
            .snapshot()
            .iter()
            .flat_map(|chunk| chunk.iter().map(|m| m.conn))
            .collect();
        all.sort_unstable();
        all
    }

    #[test]
    fn joins_and_leaves_in_any_order_keep_every_member_once() {
        let mut members = Members::default();
        let all: Vec<Outbound> = (0..3 * CHUNK as u64 + 5).map(member).collect();
        for m in &all {
            assert!(members.insert(m));
            assert!(!members.insert(m));
        }
        assert_eq!(members.len(), all.len());
        assert_eq!(conns(&members), (0..all.len() as u64).collect::<Vec<_>>());
        // A snapshot taken before changes is not affected by them.
        let before = members.snapshot();
        // Leave from the middle, the front, the end.
        let mut left = Vec::new();
        for conn in (0..all.len() as u64)
            .filter(|c| c % 3 == 0)
            .chain([1, all.len() as u64 - 1])
        {
            assert!(members.remove(conn));
            assert!(!members.remove(conn));
            left.push(conn);
        }
        assert_eq!(before.iter().map(|c| c.len()).sum::<usize>(), all.len());
        let expected: Vec<u64> = (0..all.len() as u64)
            .filter(|c| !left.contains(c))
            .collect();
        assert_eq!(conns(&members), expected);
        assert_eq!(members.len(), expected.len());
        for conn in expected {
            assert!(members.remove(conn));
        }
        assert!(members.is_empty());
        assert!(members.snapshot().is_empty());
        assert!(members.index.is_none());
    }
}
