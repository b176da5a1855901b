//! A TCP proxy that can cut the network between the processes under test and a dependency —
//! after the Rust package registry's `ChaosProxy`. [`ChaosProxy::partition`] closes every
//! proxied connection and refuses new ones (the dependency keeps running, its data intact:
//! a partition, not a restart); [`ChaosProxy::heal`] lets connections through again.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct ChaosProxy {
    pub addr: SocketAddr,
    partitioned: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl ChaosProxy {
    /// Listens on a free loopback port and forwards each connection to `upstream` (connected
    /// when a client connects, so the upstream may start later).
    pub async fn start(upstream: SocketAddr) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (partitioned, watcher) = watch::channel(false);
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if *watcher.borrow() {
                    // Partitioned: the connection is closed at once.
                    continue;
                }
                let mut cut = watcher.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let mut inbound = inbound;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|p| *p) => {}
                    }
                    // Both ends are dropped here: each side sees its connection close.
                });
            }
        });
        ChaosProxy {
            addr,
            partitioned,
            accept,
        }
    }

    /// Cuts every connection through the proxy and refuses new ones until [`Self::heal`].
    pub fn partition(&self) {
        self.partitioned.send_replace(true);
    }

    pub fn heal(&self) {
        self.partitioned.send_replace(false);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.partition();
    }
}
