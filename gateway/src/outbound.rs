//! One connection's outbound queue — its *mailbox* — as the hub and the session see it.
//!
//! The mailbox is bounded in **bytes**, not items (`outbound_queue_bytes`, 1 MiB by
//! default), so a slow client costs at most that much however small or large its events
//! are. Publishers never wait on it: [`Outbound::push`] takes a short lock, appends, and
//! wakes the session only when the queue was empty (the session then takes everything
//! queued, up to a batch, and flushes once). A session written to more often than the write
//! delay marks its mailbox busy until one write delay after its last write; until then the
//! wake-up waits for the gateway's write-delay tick so frames gather into fewer writes, and
//! after it an event wakes the session at once again (see [`crate::write_delay`]).
//!
//! Two kinds of events, two policies:
//! - **latest-value** events (`partner.location`, `revenue.updated`, see
//!   [`switchyard_protocol::events::is_latest_value`]) are *conflated*: a newer one replaces
//!   the queued older one of the same room — removed from its place and appended, so
//!   offsets still leave in increasing order. A client on a bad network gets the freshest
//!   position, not a backlog; it sees the skipped offsets as a jump, which for these events
//!   is not a loss. In a room where each partner's position stands alone (`admin:fleet`), an
//!   event replaces only an older one with the same [`Event::key`] (the partner).
//! - **ordered** events (everything else) are never dropped: when one does not fit, the
//!   queue is cleared, closed, and the connection *kicked* — its session closes it with
//!   4003 (slow consumer: reconnect and recover). Other clients and the publisher are
//!   never held up.
//!
//! An event's bytes are shared by every recipient ([`Event`] is one `Arc` per publication),
//! so a queued event costs one pointer in the queue plus its share of the byte budget.

use crate::write_delay::WriteDelay;
use axum::extract::ws::Utf8Bytes;
use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Poll;
use switchyard_protocol::Room;
use switchyard_protocol::close::Disconnect;
use tokio::time::Instant;

/// What one queued item is charged beyond its frame's bytes (queue slot, bookkeeping).
pub const ITEM_OVERHEAD: usize = 64;

/// One publication as every local recipient shares it.
#[derive(Debug)]
pub struct Event {
    pub room: Room,
    /// The epoch `offset` counts in (see [`crate::cursor`]).
    pub epoch: Arc<str>,
    pub offset: u64,
    /// The encoded `{"type":"event",...}` frame.
    pub frame: Utf8Bytes,
    /// Only the newest matters (conflated in a backed-up queue).
    pub latest_only: bool,
    /// What a latest-value event is the newest of within its room, when not of the whole room:
    /// the partner, in `admin:fleet`. Only an older event with the same key is replaced.
    pub key: Option<Box<str>>,
    /// When this gateway got it from the bus (fan-out latency is measured from here).
    pub received: tokio::time::Instant,
}

impl Event {
    /// An event received from the bus now.
    pub fn new(
        room: Room,
        epoch: Arc<str>,
        offset: u64,
        frame: Utf8Bytes,
        latest_only: bool,
    ) -> Event {
        Event {
            room,
            epoch,
            offset,
            frame,
            latest_only,
            key: None,
            received: tokio::time::Instant::now(),
        }
    }

    /// The same event, conflated only with older ones of `key` (see [`Event::key`]).
    pub fn with_key(mut self, key: Option<Box<str>>) -> Event {
        self.key = key;
        self
    }
}

/// What waits in a connection's mailbox.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// An event. The session may drop it (room left, or already covered by a snapshot or a
    /// recovery).
    Event(Arc<Event>),
    /// Tell the client that events of `room` may have been lost (bus gap).
    Gap { room: Room },
    /// Leave `room` and tell the client why (partner reassigned).
    Revoke { room: Room, reason: Arc<str> },
}

impl Outgoing {
    /// Bytes charged against the mailbox's budget.
    fn cost(&self) -> usize {
        ITEM_OVERHEAD
            + match self {
                Outgoing::Event(event) => event.frame.len(),
                Outgoing::Gap { room } => room.as_str().len(),
                Outgoing::Revoke { room, reason } => room.as_str().len() + reason.len(),
            }
    }
}

/// What became of a pushed item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Replaced an older event of the same room (latest-value).
    Conflated,
    /// Did not fit: the connection was kicked as a slow consumer.
    Overflow,
    /// The connection is closing; nothing more is queued.
    Closed,
}

impl Pushed {
    pub fn accepted(self) -> bool {
        matches!(self, Pushed::Queued | Pushed::Conflated)
    }
}

#[derive(Debug)]
struct Queue {
    items: VecDeque<Outgoing>,
    bytes: Charge,
    /// Latest-value events among `items`: a push only looks for one to replace when some
    /// are queued, so a backlog of ordered events is never scanned.
    latest_only: usize,
    closed: bool,
    /// Why the session must close, once told ([`Mailbox::kick`]).
    kicked: Option<Disconnect>,
    /// The session writes more often than the write delay: until this moment (its last write
    /// plus the delay) an event wakes it at the delay's tick, not at once.
    busy_until: Option<Instant>,
    /// Registered with the write delay's tick, not yet woken.
    deferred: bool,
}

/// The bytes one mailbox is charged, and the process-wide gauge of every mailbox's bytes
/// (`switchyard_outbound_queue_bytes`): each change to one is made to the other, here and
/// nowhere else — whatever is queued (events, gaps, revokes, closes) and however it leaves
/// (written, conflated away, dropped with an overflowing or closing mailbox). The one
/// exception is a fan-out's events ([`Outbound::push_owing`]): their bytes reach the gauge
/// in one sum when the fan-out is done.
#[derive(Debug)]
struct Charge {
    bytes: usize,
    gauge: metrics::Gauge,
}

impl Charge {
    fn add(&mut self, n: usize) {
        self.bytes += n;
        self.gauge.increment(n as f64);
    }

    /// [`Charge::add`] whose gauge increment the caller makes, once for many mailboxes
    /// (`owed` collects it): a fan-out to thousands touches the process-wide gauge once, not
    /// once per member — one contended atomic per recipient was a sixth of a fan-out's CPU
    /// (issue #17 §2 profile).
    fn add_owed(&mut self, n: usize, owed: &mut usize) {
        self.bytes += n;
        *owed += n;
    }

    fn sub(&mut self, n: usize) {
        self.bytes -= n;
        self.gauge.decrement(n as f64);
    }

    fn clear(&mut self) {
        let n = std::mem::take(&mut self.bytes);
        self.gauge.decrement(n as f64);
    }
}

fn is_latest_only(item: &Outgoing) -> bool {
    matches!(item, Outgoing::Event(event) if event.latest_only)
}

/// How a mailbox wakes its one session: a flag set by whoever has news (something queued, a
/// kick) and the session's waker. Lock-free both ways, unlike a `Notify` (whose waiter list
/// is behind a mutex, taken once to wait and once to wake): a fan-out wakes thousands of
/// sessions, and each wakes once per event at low rates (issue #17 §2 profile).
#[derive(Debug, Default)]
struct Wake {
    /// Set by [`Wake::wake`], cleared by the poll that reports it: many wakes before the
    /// session looks are one.
    pending: AtomicBool,
    waker: AtomicWaker,
}

impl Wake {
    fn wake(&self) {
        self.pending.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn poll(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        // Registered before the flag is read again, so a wake in between is never missed.
        if !self.pending.swap(false, Ordering::Acquire) {
            self.waker.register(cx.waker());
            if !self.pending.swap(false, Ordering::Acquire) {
                return Poll::Pending;
            }
        }
        Poll::Ready(())
    }
}

/// A connection's bounded mailbox, shared by the hub (pushes) and its session (takes).
/// One wake-up serves the session for both reasons: something queued, or a kick.
#[derive(Debug)]
pub struct Mailbox {
    queue: Mutex<Queue>,
    ready: Wake,
    limit: usize,
    /// The gateway's write delay, if it has one, and this mailbox as it registers there.
    write_delay: Option<Arc<WriteDelay>>,
    me: Weak<Mailbox>,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item`; its bytes are added to the gauge here, or to `owed` when given (the
    /// caller then adds `owed` to the gauge itself).
    fn push(&self, item: Outgoing, owed: Option<&mut usize>) -> Pushed {
        let mut queue = self.lock();
        if queue.closed {
            return Pushed::Closed;
        }
        let cost = item.cost();
        let mut freed = 0;
        if let Outgoing::Event(new) = &item
            && new.latest_only
            && queue.latest_only > 0
            && let Some(i) = queue.items.iter().rposition(
                |old| matches!(old, Outgoing::Event(old) if old.latest_only && old.room == new.room && old.key == new.key),
            )
            && let Some(old) = queue.items.remove(i)
        {
            freed = old.cost();
            queue.bytes.sub(freed);
            queue.latest_only -= 1;
        }
        if queue.bytes.bytes + cost > self.limit {
            queue.items = VecDeque::new();
            queue.bytes.clear();
            queue.latest_only = 0;
            queue.closed = true;
            drop(queue);
            self.kick(Disconnect::SLOW);
            return Pushed::Overflow;
        }
        let was_empty = queue.items.is_empty();
        queue.latest_only += usize::from(is_latest_only(&item));
        queue.items.push_back(item);
        match owed {
            Some(owed) => queue.bytes.add_owed(cost, owed),
            None => queue.bytes.add(cost),
        }
        // The clock is read only for the first item after a take, of a busy mailbox not yet
        // waiting for the tick: at most once per write, however many events a fan-out brings.
        let defer = was_empty
            && !queue.deferred
            && queue.busy_until.is_some_and(|until| Instant::now() < until);
        queue.deferred |= defer;
        drop(queue);
        match &self.write_delay {
            Some(write_delay) if defer => write_delay.defer(self.me.clone()),
            _ if was_empty => self.ready.wake(),
            _ => {}
        }
        if freed > 0 {
            Pushed::Conflated
        } else {
            Pushed::Queued
        }
    }

    /// Moves up to `max` queued items into `batch`. When more remain, the session is woken
    /// again so it comes back for them.
    pub fn take(&self, batch: &mut Vec<Outgoing>, max: usize) {
        let mut queue = self.lock();
        let n = queue.items.len().min(max);
        let mut bytes = 0;
        let mut latest_only = 0;
        for item in queue.items.drain(..n) {
            bytes += item.cost();
            latest_only += usize::from(is_latest_only(&item));
            batch.push(item);
        }
        queue.bytes.sub(bytes);
        queue.latest_only -= latest_only;
        let more = !queue.items.is_empty();
        if queue.items.is_empty() && queue.items.capacity() > 64 {
            // A burst grew the queue; give the memory back while idle.
            queue.items = VecDeque::new();
        }
        drop(queue);
        if more {
            self.ready.wake();
        }
    }

    /// Until when the session counts as writing more often than the write delay — its last
    /// write plus the delay, or `None` when it does not: until then an event wakes it at the
    /// delay's next tick rather than at once; after it, at once again, however long ago the
    /// busy spell was. Without a write delay, never busy.
    pub fn set_busy_until(&self, until: Option<Instant>) {
        let until = until.filter(|_| self.write_delay.is_some());
        let mut queue = self.lock();
        queue.busy_until = until;
        if until.is_none() && queue.deferred && !queue.items.is_empty() {
            drop(queue);
            self.ready.wake();
        }
    }

    /// The write delay's tick: wake the session for what gathered.
    pub(crate) fn wake_deferred(&self) {
        self.lock().deferred = false;
        self.ready.wake();
    }

    /// Completes when something may have been queued since the last [`Mailbox::take`], or the
    /// session was kicked. For the mailbox's one session: a second waiter would take the
    /// first one's place.
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| self.ready.poll(cx)).await
    }

    /// The session is ending: refuse further items and free what is queued.
    pub fn close(&self) {
        let mut queue = self.lock();
        queue.closed = true;
        queue.items = VecDeque::new();
        queue.latest_only = 0;
        queue.bytes.clear();
    }

    /// Tells the session to close with `why`: the first reason stands unless a later one
    /// outranks it ([`Disconnect::outranks`]: a revocation beats a slow consumer, anything beats
    /// the drain's scheduled close). Never queued, so it cannot be lost to a full queue.
    pub fn kick(&self, why: Disconnect) {
        let mut queue = self.lock();
        if queue.kicked.is_none_or(|current| why.outranks(current)) {
            queue.kicked = Some(why);
            drop(queue);
            self.ready.wake();
        }
    }

    /// Why the session was told to close, if it was.
    pub fn kicked(&self) -> Option<Disconnect> {
        self.lock().kicked
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes.bytes
    }
}

/// The hub's handle on one connection.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub conn: u64,
    /// The connection's user (`sub`), for revocations aimed at one user.
    pub sub: Arc<str>,
    mailbox: Arc<Mailbox>,
}

impl Outbound {
    /// A connection's handle and its mailbox, bounded to `limit_bytes` queued bytes.
    /// `queue_bytes` is the gauge every mailbox's bytes are added to.
    /// `write_delay` is the gateway's (see [`crate::write_delay`]), if it has one.
    pub fn new(
        conn: u64,
        sub: Arc<str>,
        limit_bytes: usize,
        queue_bytes: metrics::Gauge,
        write_delay: Option<Arc<WriteDelay>>,
    ) -> (Outbound, Arc<Mailbox>) {
        let mailbox = Arc::new_cyclic(|me| Mailbox {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: Charge {
                    bytes: 0,
                    gauge: queue_bytes,
                },
                latest_only: 0,
                closed: false,
                kicked: None,
                busy_until: None,
                deferred: false,
            }),
            ready: Wake::default(),
            limit: limit_bytes.max(ITEM_OVERHEAD),
            write_delay: write_delay.filter(|w| !w.delay().is_zero()),
            me: me.clone(),
        });
        (
            Outbound {
                conn,
                sub,
                mailbox: mailbox.clone(),
            },
            mailbox,
        )
    }

    /// Tells the session to close with `why` (see [`Mailbox::kick`]).
    pub fn kick(&self, why: Disconnect) {
        self.mailbox.kick(why);
    }

    /// Queues `item` without waiting; see the module docs for what happens when it does not
    /// fit.
    pub fn push(&self, item: Outgoing) -> Pushed {
        self.mailbox.push(item, None)
    }

    /// [`Outbound::push`] for a fan-out: the bytes queued are added to `owed` instead of the
    /// gauge, and the caller adds `owed` to `switchyard_outbound_queue_bytes` once it has
    /// pushed to every member (until then the gauge reads low by what is in flight).
    pub fn push_owing(&self, item: Outgoing, owed: &mut usize) -> Pushed {
        self.mailbox.push(item, Some(owed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(room: &str, offset: u64, latest_only: bool, size: usize) -> Outgoing {
        let frame: String = "x".repeat(size);
        Outgoing::Event(Arc::new(Event::new(
            Room::parse(room).unwrap(),
            "e1".into(),
            offset,
            frame.into(),
            latest_only,
        )))
    }

    fn outbound(limit: usize) -> (Outbound, Arc<Mailbox>) {
        Outbound::new(1, "u".into(), limit, metrics::Gauge::noop(), None)
    }

    /// A gauge that keeps its value, to read back what a mailbox added and removed.
    #[derive(Default)]
    struct Sum(Mutex<f64>);

    impl metrics::GaugeFn for Sum {
        fn increment(&self, value: f64) {
            *self.0.lock().unwrap() += value;
        }
        fn decrement(&self, value: f64) {
            *self.0.lock().unwrap() -= value;
        }
        fn set(&self, value: f64) {
            *self.0.lock().unwrap() = value;
        }
    }

    #[test]
    fn the_gauge_follows_every_item_in_and_out_however_it_leaves() {
        let sum = Arc::new(Sum::default());
        let gauge = || metrics::Gauge::from_arc(sum.clone());
        let value = || *sum.0.lock().unwrap();
        let (out, mailbox) = Outbound::new(1, "u".into(), 1 << 20, gauge(), None);
        out.push(event("order:1", 1, false, 100));
        out.push(event("order:1", 2, true, 100));
        out.push(event("order:1", 3, true, 10)); // conflates the one before
        out.push(Outgoing::Gap {
            room: Room::parse("order:1").unwrap(),
        });
        out.push(Outgoing::Revoke {
            room: Room::parse("order:1").unwrap(),
            reason: "r".into(),
        });
        assert_eq!(value(), mailbox.queued_bytes() as f64);
        let mut batch = Vec::new();
        mailbox.take(&mut batch, 2);
        assert_eq!(value(), mailbox.queued_bytes() as f64);
        mailbox.close();
        assert_eq!(value(), 0.0, "closed: nothing left anywhere");
        // An overflow frees its queue too.
        let (out, _mailbox) =
            Outbound::new(2, "u".into(), 2 * (ITEM_OVERHEAD + 100), gauge(), None);
        for offset in 1..=3 {
            out.push(event("order:1", offset, false, 100));
        }
        assert_eq!(value(), 0.0, "overflowed: nothing left anywhere");
        // A fan-out's pushes owe their bytes; the gauge gets them in one sum.
        let (out, mailbox) = Outbound::new(3, "u".into(), 1 << 20, gauge(), None);
        let mut owed = 0;
        for offset in 1..=3 {
            assert!(
                out.push_owing(event("order:1", offset, false, 100), &mut owed)
                    .accepted()
            );
        }
        assert_eq!(owed, mailbox.queued_bytes());
        assert_eq!(value(), 0.0, "not yet added");
        metrics::GaugeFn::increment(&*sum, owed as f64);
        let mut batch = Vec::new();
        mailbox.take(&mut batch, 2);
        assert_eq!(value(), mailbox.queued_bytes() as f64);
        mailbox.close();
        assert_eq!(value(), 0.0);
    }

    fn offsets(batch: &[Outgoing]) -> Vec<(String, u64)> {
        batch
            .iter()
            .filter_map(|item| match item {
                Outgoing::Event(e) => Some((e.room.to_string(), e.offset)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn latest_value_events_replace_their_older_self_and_keep_offsets_increasing() {
        let (out, mailbox) = outbound(1 << 20);
        assert!(matches!(
            out.push(event("order:1", 1, true, 10)),
            Pushed::Queued
        ));
        out.push(event("order:1", 2, false, 10));
        out.push(event("order:2", 3, true, 10));
        assert!(matches!(
            out.push(event("order:1", 4, true, 10)),
            Pushed::Conflated
        ));
        let mut batch = Vec::new();
        mailbox.take(&mut batch, 100);
        assert_eq!(
            offsets(&batch),
            [("order:1", 2), ("order:2", 3), ("order:1", 4)].map(|(r, o)| (r.to_owned(), o))
        );
        assert_eq!(mailbox.queued_bytes(), 0);
    }

    #[test]
    fn an_ordered_event_that_does_not_fit_kicks_and_frees_the_queue() {
        let limit = 4 * (ITEM_OVERHEAD + 100);
        let (out, mailbox) = outbound(limit);
        for offset in 1..=4 {
            assert!(out.push(event("order:1", offset, false, 100)).accepted());
        }
        assert_eq!(mailbox.queued_bytes(), limit);
        assert_eq!(out.push(event("order:1", 5, false, 100)), Pushed::Overflow);
        assert_eq!(mailbox.queued_bytes(), 0);
        assert_eq!(out.push(event("order:1", 6, false, 1)), Pushed::Closed);
        assert_eq!(mailbox.kicked(), Some(Disconnect::SLOW));
        mailbox.kick(Disconnect::SHUTDOWN);
        assert_eq!(mailbox.kicked(), Some(Disconnect::SLOW), "outranked");
        mailbox.kick(Disconnect::REVOKED);
        assert_eq!(mailbox.kicked(), Some(Disconnect::REVOKED), "a revoke wins");
    }

    #[test]
    fn latest_value_events_alone_never_overflow_a_room() {
        let (out, mailbox) = outbound(2 * (ITEM_OVERHEAD + 100));
        for offset in 1..=10_000 {
            assert!(out.push(event("order:1", offset, true, 100)).accepted());
        }
        let mut batch = Vec::new();
        mailbox.take(&mut batch, 100);
        assert_eq!(offsets(&batch), [("order:1".to_owned(), 10_000)]);
    }

    /// A mailbox with the gateway's write delay of 20 ms, its ticker running.
    fn delayed() -> (Outbound, Arc<Mailbox>, std::time::Duration) {
        let delay = std::time::Duration::from_millis(20);
        let write_delay = WriteDelay::new(delay);
        tokio::spawn(write_delay.clone().run());
        let (out, mailbox) = Outbound::new(
            1,
            "u".into(),
            1 << 20,
            metrics::Gauge::noop(),
            Some(write_delay),
        );
        (out, mailbox, delay)
    }

    /// Whether `mailbox`'s session is woken within `ms` (of paused time).
    async fn woken_within(mailbox: &Mailbox, ms: u64) -> bool {
        let within = std::time::Duration::from_millis(ms);
        tokio::time::timeout(within, mailbox.ready()).await.is_ok()
    }

    /// Issue #17 §2: a busy connection's events wait for the write delay's one tick and go
    /// out together; a connection that is not busy is woken at once.
    #[tokio::test(start_paused = true)]
    async fn a_busy_mailbox_gathers_events_until_the_write_delay_tick() {
        let (out, mailbox, delay) = delayed();
        let mut batch = Vec::new();
        out.push(event("order:1", 1, false, 10));
        assert!(woken_within(&mailbox, 1).await, "not busy: at once");
        mailbox.take(&mut batch, 100);
        let started = Instant::now();
        mailbox.set_busy_until(Some(started + delay));
        out.push(event("order:1", 2, false, 10));
        assert!(!woken_within(&mailbox, 1).await, "busy: not at once");
        for offset in 3..=4 {
            out.push(event("order:1", offset, false, 10));
        }
        assert!(woken_within(&mailbox, 100).await, "busy: at the tick");
        assert!(started.elapsed() >= delay);
        batch.clear();
        mailbox.take(&mut batch, 100);
        assert_eq!(offsets(&batch).len(), 3, "gathered into one batch");
        // No longer busy: at once again.
        mailbox.set_busy_until(None);
        out.push(event("order:1", 5, false, 10));
        assert!(woken_within(&mailbox, 1).await);
    }

    /// Issue #17 §2: busy decays with time — the first event after a busy spell, once the
    /// connection has been quiet for longer than the write delay, wakes its session at once
    /// (no later write has to clear it), while events within the delay still gather.
    #[tokio::test(start_paused = true)]
    async fn a_busy_mailbox_quiet_for_longer_than_the_delay_wakes_at_once() {
        let (out, mailbox, delay) = delayed();
        let mut batch = Vec::new();
        // A write just now, close behind another: busy until one delay from now.
        mailbox.set_busy_until(Some(Instant::now() + delay));
        tokio::time::sleep(delay / 2).await;
        out.push(event("order:1", 1, false, 10));
        assert!(
            !woken_within(&mailbox, 1).await,
            "within the delay: gathers"
        );
        out.push(event("order:1", 2, false, 10));
        assert!(woken_within(&mailbox, 100).await, "at the tick");
        mailbox.take(&mut batch, 100);
        assert_eq!(offsets(&batch).len(), 2, "gathered into one batch");
        // That write was busy too (two frames): busy until one delay after it...
        mailbox.set_busy_until(Some(Instant::now() + delay));
        // ...then quiet for longer than the delay, and nothing written since.
        tokio::time::sleep(delay * 3).await;
        let pushed = Instant::now();
        out.push(event("order:1", 3, false, 10));
        assert!(
            woken_within(&mailbox, 1).await,
            "quiet past the delay: at once"
        );
        assert_eq!(pushed.elapsed(), std::time::Duration::ZERO);
    }

    /// Issue #17 §2: the session's wake-up is never lost — neither one given before the
    /// session waits nor one given while it waits — and many before it looks are one.
    #[tokio::test]
    async fn a_wake_before_or_while_waiting_is_kept_and_many_are_one() {
        let (out, mailbox) = outbound(1 << 20);
        out.push(event("order:r", 1, false, 1));
        out.push(event("order:r", 2, false, 1));
        assert!(woken_within(&mailbox, 1000).await, "given before the wait");
        assert!(!woken_within(&mailbox, 10).await, "two pushes, one wake");
        let mut batch = Vec::new();
        mailbox.take(&mut batch, 10);
        assert_eq!(batch.len(), 2);
        let waiter = {
            let mailbox = mailbox.clone();
            tokio::spawn(async move { mailbox.ready().await })
        };
        tokio::task::yield_now().await;
        mailbox.kick(Disconnect::SLOW);
        tokio::time::timeout(std::time::Duration::from_secs(30), waiter)
            .await
            .expect("woken while waiting")
            .unwrap();
    }

    #[tokio::test]
    async fn take_wakes_again_while_items_remain() {
        let (out, mailbox) = outbound(1 << 20);
        for offset in 1..=5 {
            out.push(event("order:r", offset, false, 1));
        }
        mailbox.ready().await;
        let mut batch = Vec::new();
        mailbox.take(&mut batch, 3);
        assert_eq!(batch.len(), 3);
        mailbox.ready().await;
        batch.clear();
        mailbox.take(&mut batch, 3);
        assert_eq!(batch.len(), 2);
    }
}
