//! Listening sockets: one SO_REUSEPORT socket per core on the same address, so the kernel spreads new
//! connections over the cores and no accept is shared between threads.
//!
//! Sockets are bound on the starting thread (so "address in use" is reported before any core starts)
//! and handed to the cores as std listeners.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

fn socket(addr: SocketAddr, reuseport: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if reuseport {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Bind `count` listeners sharing `addr` (port 0 picks one free port for all of them).
///
/// A plain bind probes the address first: SO_REUSEPORT would otherwise let us silently share a port
/// with another process that also set it.
pub fn bind_reuseport(
    addr: SocketAddr,
    count: usize,
    backlog: u32,
) -> io::Result<Vec<TcpListener>> {
    if addr.port() != 0 {
        let probe = socket(addr, false)?;
        probe.bind(&addr.into())?;
        probe.listen(1)?;
    }
    let mut bound = addr;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let s = socket(bound, true)?;
        s.bind(&bound.into())?;
        s.listen(backlog.min(i32::MAX as u32) as i32)?;
        if bound.port() == 0 {
            if let Some(a) = s.local_addr()?.as_socket() {
                bound = a;
            }
        }
        out.push(s.into());
    }
    Ok(out)
}
