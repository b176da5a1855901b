//! One connection's outbound queue, as the hub sees it.
//!
//! The queue is a bounded channel of already-encoded frames; every frame is shared
//! (`Utf8Bytes` is reference-counted), so a queued event costs one slot, not a copy.
//! Publishers never wait on it: [`Outbound::push`] is a non-blocking `try_send`. A full
//! queue means the client reads slower than its rooms publish; the connection is then
//! *kicked* — its session closes it with 4003 (slow consumer) — and the publication is
//! not delivered to it. Other clients and the publisher are never held up.

use axum::extract::ws::Utf8Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use tokio::sync::{Notify, mpsc};

/// Why a session was told to end from outside its own loop.
#[derive(Debug, Default)]
pub struct Kick {
    notify: Notify,
    /// Close code to use; 0 while not kicked.
    code: AtomicU16,
}

impl Kick {
    /// Asks the session to close with `code`. The first reason wins.
    pub fn kick(&self, code: u16) {
        if self
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.notify.notify_one();
        }
    }

    /// Waits until kicked, then returns the close code.
    pub async fn kicked(&self) -> u16 {
        loop {
            let code = self.code.load(Ordering::Acquire);
            if code != 0 {
                return code;
            }
            self.notify.notified().await;
        }
    }
}

/// What waits in a connection's outbound queue.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// An event frame of `room` at `offset`, shared by every recipient. The session may drop
    /// it (room left, or already covered by a snapshot or a recovery).
    Event {
        room: Arc<str>,
        offset: u64,
        frame: Utf8Bytes,
    },
    /// Tell the client that events of `room` may have been lost (bus gap).
    Gap { room: Arc<str> },
    /// Leave `room` and tell the client why (partner reassigned).
    Revoke { room: Arc<str>, reason: Arc<str> },
}

/// The hub's handle on one connection.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub conn: u64,
    /// The connection's user (`sub`), for revocations aimed at one user.
    pub sub: Arc<str>,
    tx: mpsc::Sender<Outgoing>,
    kick: Arc<Kick>,
}

impl Outbound {
    pub fn new(
        conn: u64,
        sub: &str,
        capacity: usize,
    ) -> (Outbound, mpsc::Receiver<Outgoing>, Arc<Kick>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let kick = Arc::new(Kick::default());
        (
            Outbound {
                conn,
                sub: sub.into(),
                tx,
                kick: kick.clone(),
            },
            rx,
            kick,
        )
    }

    /// Queues anything without waiting. A full queue kicks the connection as a slow consumer.
    pub fn push_outgoing(&self, item: Outgoing) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("switchyard_slow_consumer_closes_total").increment(1);
                self.kick.kick(switchyard_protocol::close::SLOW_CONSUMER);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}
