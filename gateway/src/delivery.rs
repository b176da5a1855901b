//! Delivery on several workers per process (issue #20 §3): what the bus and the controller
//! hand the gateway — publications, revocations, gaps — is fanned out by one of [`Delivery::workers`] tasks chosen
//! by a hash of the room, so rooms spread over the cores while each room's publications (and
//! its revocations) keep their order. The bus's own task only hashes and enqueues.
//!
//! Each worker's queue is bounded ([`QUEUE`] items). When a worker is that far behind, the
//! publication is not queued: the room's members are told `gap` at once and recover from the
//! room's history, exactly as when the bus itself lost messages — the gateway's memory stays
//! bounded and nothing is silently lost.

use crate::hub::Hub;
use std::hash::BuildHasher;
use std::sync::Arc;
use switchyard_broker::{Control, Deliver, Listen, Publication};
use tokio::sync::mpsc;

/// Items a worker may have queued.
pub const QUEUE: usize = 65_536;

enum Work {
    Publish(Publication),
    Revoke(Control),
}

/// The hub's connection to the bus: a [`Deliver`] sink that hands each room to its worker.
pub struct Delivery {
    hub: Arc<Hub>,
    workers: Vec<mpsc::Sender<Work>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Delivery {
    /// Starts `workers` tasks (at least one) that fan out into `hub`; they end when the
    /// delivery is dropped (the broker holds it for the process's life).
    pub fn start(hub: Arc<Hub>, workers: usize) -> Delivery {
        let workers = (0..workers.max(1))
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Work>(QUEUE);
                let hub = hub.clone();
                tokio::spawn(async move {
                    let mut batch = Vec::with_capacity(64);
                    while rx.recv_many(&mut batch, 64).await > 0 {
                        for work in batch.drain(..) {
                            match work {
                                Work::Publish(publication) => hub.deliver(publication),
                                Work::Revoke(control) => Listen::control(hub.as_ref(), &control),
                            }
                        }
                    }
                });
                tx
            })
            .collect();
        Delivery {
            hub,
            workers,
            hasher: Default::default(),
        }
    }

    /// How many workers there are by default: one per core.
    pub fn default_workers() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    fn worker(&self, room: &str) -> &mpsc::Sender<Work> {
        let hash = self.hasher.hash_one(room);
        &self.workers[(hash % self.workers.len() as u64) as usize]
    }
}

impl Deliver for Delivery {
    fn deliver(&self, publication: Publication) {
        let worker = self.worker(publication.room.as_str());
        if let Err(err) = worker.try_send(Work::Publish(publication)) {
            let Work::Publish(publication) = err.into_inner() else {
                unreachable!("a publication was sent")
            };
            metrics::counter!("switchyard_delivery_overflows_total").increment(1);
            self.hub.gap_room(publication.room.as_str());
        }
    }

    fn gap(&self) {
        self.hub.gap();
    }
}

impl Listen for Delivery {
    fn control(&self, control: &Control) {
        match control {
            // In the room's order: after the events published before it.
            Control::Revoke { room, .. } => {
                if self
                    .worker(room)
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
