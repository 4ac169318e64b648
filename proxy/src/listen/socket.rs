//! The listening socket and the process's open-file limit.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Binds a non-blocking listening socket with `backlog` (the kernel queue of
/// connections not yet accepted: while Veer is at `max_connections`, new
/// clients wait there rather than being refused).
pub(super) fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// File descriptors kept aside for everything that is not a client or
/// backend connection (plugin files, the watcher, logs, the listener).
const FD_RESERVE: u64 = 64;

/// Raises the soft open-file limit to the hard one (servers need many
/// descriptors; the soft default is often 1024) and returns the new soft
/// limit.
pub(super) fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    match (limit.current, limit.maximum) {
        (Some(current), Some(maximum)) if maximum > current => {
            let raised = Rlimit {
                current: Some(maximum),
                maximum: Some(maximum),
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => maximum,
                Err(_) => current,
            }
        }
        (Some(current), _) => current,
        (None, _) => u64::MAX,
    }
}

/// `max_connections = 0` resolved: half the descriptors left after the
/// reserve (each client may need a backend connection too), within sane
/// bounds.
pub(super) fn auto_max_connections(fd_limit: u64) -> u32 {
    (fd_limit.saturating_sub(FD_RESERVE) / 2).clamp(16, 1 << 20) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_automatic_cap_leaves_room_for_a_backend_connection_per_client() {
        assert_eq!(auto_max_connections(1024), 480);
        assert_eq!(auto_max_connections(10), 16);
        assert_eq!(auto_max_connections(u64::MAX), 1 << 20);
    }
}
