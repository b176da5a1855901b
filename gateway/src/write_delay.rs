//! Write delay under load (issue #17 §2; Centrifuge's `WriteDelay`): a connection that is
//! being written to more often than every `write_delay` lets its frames gather for up to that
//! long and writes them together — one wake-up of its session, one flush, one `write(2)` for
//! the lot instead of one per event.
//!
//! Without a timer per connection or per write: a mailbox that its session marked *busy*
//! ([`crate::outbound::Mailbox::set_busy_until`]) does not wake its session when an event
//! arrives in an empty queue; it registers once with the gateway's one [`WriteDelay`] instead,
//! whose single ticker wakes every registered session `write_delay` after the first of them
//! registered (it sleeps while none is waiting, so an idle gateway has no timer running).
//!
//! A session marks its mailbox busy when it writes two frames at once or again less than
//! `write_delay` after its previous write — busy *until* `write_delay` after that write, so
//! busy decays with time: an event that arrives once the connection has been quiet for longer
//! than the delay wakes the session at once (the push compares against the clock; no later
//! write is needed to clear it), and a write of one frame after a longer pause clears it. So at
//! low rates nothing is delayed, and under load frames still gather until the tick.

use crate::outbound::Mailbox;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// The gateway's one ticker, and the mailboxes waiting for it.
#[derive(Debug)]
pub struct WriteDelay {
    delay: Duration,
    waiting: Mutex<Vec<Weak<Mailbox>>>,
    /// Rung when the first mailbox of a tick registers.
    first: Notify,
}

impl WriteDelay {
    /// A write delay of `delay`; zero turns it off (every event wakes its session at once).
    pub fn new(delay: Duration) -> Arc<WriteDelay> {
        Arc::new(WriteDelay {
            delay,
            waiting: Mutex::new(Vec::new()),
            first: Notify::new(),
        })
    }

    /// The delay; zero when off.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Wakes `mailbox`'s session at the next tick (called once per busy spell of waiting).
    pub(crate) fn defer(&self, mailbox: Weak<Mailbox>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.push(mailbox);
        if waiting.len() == 1 {
            drop(waiting);
            self.first.notify_one();
        }
    }

    /// The ticker: once a mailbox is waiting, sleeps `delay` and wakes every waiting session.
    /// Runs for the process's life (spawned once per gateway); sleeps while none is waiting.
    pub async fn run(self: Arc<Self>) {
        if self.delay.is_zero() {
            return;
        }
        let mut due = Vec::new();
        loop {
            self.first.notified().await;
            tokio::time::sleep(self.delay).await;
            std::mem::swap(
                &mut due,
                &mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()),
            );
            for mailbox in due.drain(..) {
                if let Some(mailbox) = mailbox.upgrade() {
                    mailbox.wake_deferred();
                }
            }
        }
    }
}
