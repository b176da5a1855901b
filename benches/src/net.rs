//! Client sockets bound to one of several loopback source addresses.
//!
//! One (source address, destination) pair has about 28,000 ephemeral ports; binding the client
//! sockets round-robin to 127.0.0.2, 127.0.0.3, … multiplies that. `IP_BIND_ADDRESS_NO_PORT`
//! defers the port choice to `connect`, so the same port can serve several destinations.

use nix::sys::socket::{setsockopt, sockopt::IpBindAddressNoPort};
use socket2::{Domain, Socket, Type};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use tokio::net::{TcpSocket, TcpStream};

/// Source addresses 127.0.0.2 ..= 127.0.0.{1 + n}.
pub fn loopback_sources(n: u8) -> Vec<IpAddr> {
    (0..n.max(1))
        .map(|k| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + k)))
        .collect()
}

/// Opens a TCP connection to `dst` from `src` (port chosen at connect).
pub async fn connect_from(src: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
    setsockopt(&socket, IpBindAddressNoPort, &true).map_err(std::io::Error::from)?;
    socket.bind(&SocketAddr::new(src, 0).into())?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    let std_stream: std::net::TcpStream = socket.into();
    TcpSocket::from_std_stream(std_stream).connect(dst).await
}
