//! `switchyard demo`: the embedded server plus the simulated city of `switchyard-demo`, so a
//! newcomer sees orders, payments, the revenue ticker and moving delivery partners within
//! seconds.
//!
//! The server is exactly `switchyard all` ([`server::run`] on the same listener). The
//! simulator beside it is an ordinary client of that server (the `switchyard-demo` crate,
//! built on `switchyard-client`): it speaks only the public REST API and the WebSocket
//! protocol over loopback, with tokens signed by the embedded secret (or `JWT_SECRET`).
//! Both stop on the same shutdown (Ctrl-C/SIGTERM), and the server then drains as `all` does.

use crate::config::{DemoArgs, DemoSpeed, KeySource, Server, secret_path};
use crate::server;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchyard_auth::{Issuer, VerifyKey, secret};
use switchyard_demo::{Pace, Simulation};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Runs the embedded server on `listener` and the simulator against it until `shutdown`.
pub async fn run(
    args: DemoArgs,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let simulation = Simulation {
        addr: client_addr(listener.local_addr()?),
        issuer: Arc::new(demo_issuer(&args)?),
        pace: match args.demo_speed {
            DemoSpeed::Normal => Pace::NORMAL,
            DemoSpeed::Fast => Pace::FAST,
        },
        customers: args.customers,
        partners: args.partners,
    };
    let server = tokio::spawn(server::run(
        Server::All(args.serve.clone()),
        listener,
        shutdown.clone().cancelled_owned(),
    ));
    let simulator = tokio::spawn(switchyard_demo::run(simulation, shutdown.clone()));
    let result = server.await.context("server task")?;
    // The server returns after `shutdown`: the actors have stopped or stop now.
    let _ = tokio::time::timeout(Duration::from_secs(5), simulator).await;
    result
}

/// Signs the simulator's tokens with the server's key: `JWT_SECRET`, or the embedded secret
/// beside the database (created here if it is the first start; the server then loads it).
fn demo_issuer(args: &DemoArgs) -> anyhow::Result<Issuer> {
    let jwt = &args.serve.serve.jwt;
    let secret = match jwt.key_source().map_err(anyhow::Error::msg)? {
        KeySource::Configured(config) => match config.key {
            VerifyKey::Secret(bytes) => bytes,
            VerifyKey::PublicPem { .. } => anyhow::bail!(
                "`switchyard demo` signs its own tokens: it needs JWT_SECRET (HS256) or no key \
                 at all (the embedded secret), not JWT_PUBLIC_KEY_FILE"
            ),
        },
        KeySource::Unset => {
            let path = secret_path(&args.serve.database.database_url);
            secret::load_or_create(&path)
                .with_context(|| format!("embedded JWT secret at {}", path.display()))?
                .into_bytes()
        }
    };
    Ok(Issuer::new(
        &secret,
        jwt.jwt_issuer.clone(),
        jwt.jwt_audience.clone(),
    ))
}

/// Where the simulator connects: the listening address, or loopback when it listens on
/// every interface.
fn client_addr(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}
