//! Delivery on several workers per process (issue #20 §3): what the bus and the controller
//! hand the gateway — publications, revocations, gaps — is fanned out by one of [`Delivery::workers`] tasks chosen
//! by a hash of the room, so rooms spread over the cores while each room's publications (and
//! its revocations) keep their order. The bus's own task only hashes and enqueues.
//!
//! Each worker's queue is bounded twice: in items ([`QUEUE`]) and in the bytes of the frames
//! it holds ([`QUEUE_BYTES`]), so a burst of big events cannot grow the gateway's memory
//! without limit either. When a worker is that far behind, the publication is not queued: the
//! room's members are told `gap` at once and recover from the room's history, exactly as when
//! the bus itself lost messages (counted in `switchyard_delivery_overflows_total`). The
//! publisher side is never made to wait: it is the bus's one dispatcher, shared by every room
//! of the gateway, and one slow worker must not stall the others' rooms. So the memory stays
//! bounded and nothing is silently lost.

use crate::hub::Hub;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use switchyard_broker::{Control, Deliver, Listen, Publication};
use switchyard_protocol::Room;
use tokio::sync::mpsc;

/// Items a worker may have queued.
pub const QUEUE: usize = 65_536;

/// Bytes of event frames a worker may have queued (64 MiB).
pub const QUEUE_BYTES: usize = 64 << 20;

enum Work {
    Publish(Publication),
    Revoke(Control),
}

/// One worker's queue and what it holds, in bytes.
struct Worker {
    queue: mpsc::Sender<Work>,
    /// Frame bytes queued and not yet fanned out; added before a send, taken off after the
    /// fan-out.
    bytes: Arc<AtomicUsize>,
}

/// The hub's connection to the bus: a [`Deliver`] sink that hands each room to its worker.
pub struct Delivery {
    hub: Arc<Hub>,
    workers: Vec<Worker>,
    max_bytes: usize,
    hasher: std::collections::hash_map::RandomState,
}

impl Delivery {
    /// Starts `workers` tasks (at least one) that fan out into `hub`; they end when the
    /// delivery is dropped (the broker holds it for the process's life).
    pub fn start(hub: Arc<Hub>, workers: usize) -> Delivery {
        Delivery::bounded(hub, workers, QUEUE, QUEUE_BYTES)
    }

    /// [`Delivery::start`] with each worker's queue bounded to `items` and `bytes`.
    pub fn bounded(hub: Arc<Hub>, workers: usize, items: usize, bytes: usize) -> Delivery {
        let workers = (0..workers.max(1))
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Work>(items.max(1));
                let queued = Arc::new(AtomicUsize::new(0));
                let (hub, held) = (hub.clone(), queued.clone());
                tokio::spawn(async move {
                    let mut batch = Vec::with_capacity(64);
                    while rx.recv_many(&mut batch, 64).await > 0 {
                        for work in batch.drain(..) {
                            match work {
                                Work::Publish(publication) => {
                                    let size = publication.frame.len();
                                    hub.deliver(publication);
                                    held.fetch_sub(size, Ordering::Relaxed);
                                }
                                Work::Revoke(control) => Listen::control(hub.as_ref(), &control),
                            }
                        }
                    }
                });
                Worker {
                    queue: tx,
                    bytes: queued,
                }
            })
            .collect();
        Delivery {
            hub,
            workers,
            max_bytes: bytes,
            hasher: Default::default(),
        }
    }

    /// How many workers there are by default: one per core.
    pub fn default_workers() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    fn worker(&self, room: &str) -> &Worker {
        let hash = self.hasher.hash_one(room);
        &self.workers[(hash % self.workers.len() as u64) as usize]
    }

    /// Queues the publication on its room's worker, or gives it back when the worker already
    /// holds as many items or bytes as it may.
    fn enqueue(&self, publication: Publication) -> Result<(), Publication> {
        let worker = self.worker(publication.room.as_str());
        let size = publication.frame.len();
        let before = worker.bytes.fetch_add(size, Ordering::Relaxed);
        // One frame bigger than the whole bound still goes to an empty queue.
        if before > 0 && before + size > self.max_bytes {
            worker.bytes.fetch_sub(size, Ordering::Relaxed);
            return Err(publication);
        }
        worker
            .queue
            .try_send(Work::Publish(publication))
            .map_err(|err| {
                worker.bytes.fetch_sub(size, Ordering::Relaxed);
                match err.into_inner() {
                    Work::Publish(publication) => publication,
                    Work::Revoke(_) => unreachable!("a publication was sent"),
                }
            })
    }
}

impl Deliver for Delivery {
    fn deliver(&self, publication: Publication) {
        if let Err(publication) = self.enqueue(publication) {
            metrics::counter!("switchyard_delivery_overflows_total").increment(1);
            self.hub.gap_room(publication.room.as_str());
        }
    }

    fn gap(&self) {
        self.hub.gap();
    }

    fn gap_rooms(&self, rooms: &[Room]) {
        let told: usize = rooms
            .iter()
            .map(|room| self.hub.gap_room(room.as_str()))
            .sum();
        metrics::counter!("switchyard_bus_gaps_total").increment(1);
        tracing::warn!(
            rooms = rooms.len(),
            told,
            "bus gap in some rooms: their subscribers told to recover"
        );
    }
}

impl Listen for Delivery {
    fn control(&self, control: &Control) {
        match control {
            // In the room's order: after the events published before it.
            Control::Revoke { room, .. } => {
                if self
                    .worker(room)
                    .queue
                    .try_send(Work::Revoke(control.clone()))
                    .is_err()
                {
                    // Its worker is that far behind: revoke now rather than never.
                    self.hub.control(control);
                }
            }
            _ => self.hub.control(control),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Limits;
    use crate::outbound::Outgoing;

    /// Issue #20 review: a burst of big frames stops at the byte bound, and what does not fit
    /// is told to the room's members as `gap`, never dropped silently.
    #[tokio::test]
    async fn a_worker_full_in_bytes_tells_the_room_gap() {
        let hub = Arc::new(Hub::new());
        let member = hub
            .connect(
                1,
                &switchyard_protocol::UserId::parse("a").unwrap(),
                1 << 20,
                Limits {
                    per_gateway: 10,
                    per_user: 10,
                },
            )
            .unwrap();
        let room = Room::parse("order:1").unwrap();
        hub.join(&room, &member.out);
        // Room for two 100-byte frames per worker; the worker task has not run yet (this
        // runtime has one thread), so the third finds the queue full.
        let delivery = Delivery::bounded(hub.clone(), 1, 1024, 250);
        for offset in 1..=3 {
            delivery.deliver(Publication {
                room: room.clone(),
                epoch: "e".into(),
                offset,
                frame: format!("{:100}", offset).into(),
            });
        }
        let mut seen = Vec::new();
        member.mailbox.take(&mut seen, 10);
        assert!(
            matches!(seen.as_slice(), [Outgoing::Gap { room: r }] if r.as_str() == "order:1"),
            "the overflow is a gap, told at once"
        );
        let mut offsets = Vec::new();
        for _ in 0..1000 {
            if offsets.len() == 2 {
                break;
            }
            tokio::task::yield_now().await;
            let mut seen = Vec::new();
            member.mailbox.take(&mut seen, 10);
            offsets.extend(seen.iter().filter_map(|o| match o {
                Outgoing::Event(e) => Some(e.offset),
                _ => None,
            }));
        }
        assert_eq!(offsets, vec![1, 2]);
        assert_eq!(delivery.workers[0].bytes.load(Ordering::Relaxed), 0);
    }
}
