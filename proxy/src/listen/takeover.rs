//! Zero-downtime binary upgrade: a new process takes the listening sockets
//! over from the running one, and the running one drains and exits.
//!
//! The running process waits on a Unix socket (`server.upgrade_socket`,
//! mode 0600, peers of the same user or root only). `veer run --take-over
//! PATH` connects there. One JSON value a line:
//!
//! 1. new → old: `{"hello":{"version":1,"pid":N}}`.
//! 2. old → new: `{"listeners":{"pid":M,"sockets":[{"role":"listen",
//!    "configured":"…","bound":"…"},…]}}`, the line carrying the sockets'
//!    descriptors (SCM_RIGHTS) in the same order: the plain listener, the
//!    TLS one and the admin one, whichever exist. Or `{"refused":"why"}`.
//! 3. The new process uses each socket its own configuration names (same
//!    role and configured address, or the same bound address), binds the
//!    listeners it got none for, closes the ones it does not need, starts
//!    its workers, and once every worker accepts sends `"ready"`, or
//!    `{"failed":"why"}` if it cannot serve. Its connection closing first
//!    (a crash) counts as failed: the old process logs why and serves on.
//! 4. old → new: `"draining"`. The old process has stopped accepting and
//!    drains as on SIGTERM (see `listen/mod.rs`), except that keep-alive
//!    connections are closed politely (see `connection.rs`), and exits 0.
//!
//! Nothing is closed under a pending connection: the same sockets are open
//! in both processes, so connections in the accept queue when the old one
//! stops accepting are accepted by the new one. Both accept while the new
//! one starts.
//!
//! The new process binds its own upgrade socket under a temporary name and
//! renames it over the configured path only once the hand-over is
//! complete, so a failed successor leaves the old one reachable for the
//! next try; a process removes the path on exit only while it is still its
//! own socket.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// The protocol's version; a process speaking another refuses.
const VERSION: u32 = 1;
/// The longest message line.
const MAX_LINE: usize = 64 * 1024;
/// The most descriptors a message may carry (three are handed over).
const MAX_FDS: usize = 8;
/// How long the new process waits for the sockets, and the old one for the
/// hello: both are answered at once by a live peer.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(10);
/// How long the old process waits for "ready": the new one loads (and may
/// compile) every plugin first, which can take a while for a large one.
const READY_LIMIT: Duration = Duration::from_secs(300);

/// Which listener a socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Role {
    /// `server.listen`.
    Listen,
    /// `tls.listen`.
    Tls,
    /// `admin.listen`.
    Admin,
}

/// What the old process says of one socket it hands over.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Handed {
    pub(crate) role: Role,
    /// The address in its configuration (may have port 0).
    pub(crate) configured: SocketAddr,
    /// The address it is bound to.
    pub(crate) bound: SocketAddr,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Message {
    Hello { version: u32, pid: u32 },
    Listeners { pid: u32, sockets: Vec<Handed> },
    Refused(String),
    Ready,
    Failed(String),
    Draining,
}

/// One end of the upgrade connection: lines of JSON, descriptors alongside.
struct Channel {
    stream: UnixStream,
    /// Bytes read past the last line.
    buf: Vec<u8>,
}

impl Channel {
    async fn send(&self, message: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut line = serde_json::to_vec(message).expect("plain data serialises");
        line.push(b'\n');
        let mut sent = 0;
        while sent < line.len() {
            sent += self
                .stream
                .async_io(Interest::WRITABLE, || {
                    let mut space =
                        [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                    let mut control = SendAncillaryBuffer::new(&mut space);
                    // The descriptors go with the first byte.
                    if sent == 0
                        && !fds.is_empty()
                        && !control.push(SendAncillaryMessage::ScmRights(fds))
                    {
                        return Err(io::Error::other("too many descriptors for one message"));
                    }
                    let iov = [IoSlice::new(&line[sent..])];
                    Ok(rustix::net::sendmsg(
                        &self.stream,
                        &iov,
                        &mut control,
                        SendFlags::NOSIGNAL,
                    )?)
                })
                .await?;
        }
        Ok(())
    }

    /// The next message (`None`: the peer closed), adding any descriptors
    /// that came with it to `fds` (close-on-exec).
    async fn recv(&mut self, fds: &mut Vec<OwnedFd>) -> io::Result<Option<Message>> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return serde_json::from_slice(&line[..end])
                    .map(Some)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if self.buf.len() > MAX_LINE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a message longer than 64 KiB",
                ));
            }
            let mut chunk = [0u8; 4096];
            let (n, truncated) = self
                .stream
                .async_io(Interest::READABLE, || {
                    let mut space =
                        [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                    let mut control = RecvAncillaryBuffer::new(&mut space);
                    let mut iov = [IoSliceMut::new(&mut chunk)];
                    let got = rustix::net::recvmsg(
                        &self.stream,
                        &mut iov,
                        &mut control,
                        RecvFlags::CMSG_CLOEXEC,
                    )?;
                    for message in control.drain() {
                        if let RecvAncillaryMessage::ScmRights(received) = message {
                            fds.extend(received);
                        }
                    }
                    Ok((got.bytes, got.flags.contains(ReturnFlags::CTRUNC)))
                })
                .await?;
            if truncated {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "more descriptors than a message may carry",
                ));
            }
            if n == 0 {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(io::ErrorKind::UnexpectedEof.into()),
                };
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// `recv` within `limit`, as text errors.
async fn recv_within(
    channel: &mut Channel,
    fds: &mut Vec<OwnedFd>,
    limit: Duration,
) -> Result<Option<Message>, String> {
    match tokio::time::timeout(limit, channel.recv(fds)).await {
        Err(_) => Err(format!("no answer within {limit:?}")),
        Ok(Err(e)) => Err(format!("reading from the upgrade socket: {e}")),
        Ok(Ok(message)) => Ok(message),
    }
}

/// The running process, seen from its successor: the sockets it handed
/// over and the line back to it.
pub(crate) struct Predecessor {
    path: PathBuf,
    pid: u32,
    channel: Channel,
    /// Each socket, until this process takes it.
    sockets: Vec<(Handed, Option<OwnedFd>)>,
}

impl Predecessor {
    /// Connects to the process waiting at `path` and receives its sockets.
    pub(crate) async fn connect(path: &Path) -> Result<Predecessor, Error> {
        let fail = |reason: String| Error::TakeOver {
            path: path.to_path_buf(),
            reason,
        };
        let stream = UnixStream::connect(path).await.map_err(|e| {
            fail(format!(
                "{e} (is a Veer with server.upgrade_socket running there?)"
            ))
        })?;
        let mut channel = Channel {
            stream,
            buf: Vec::new(),
        };
        let hello = Message::Hello {
            version: VERSION,
            pid: std::process::id(),
        };
        channel
            .send(&hello, &[])
            .await
            .map_err(|e| fail(format!("saying hello: {e}")))?;
        let mut fds = Vec::new();
        let (pid, handed) = match recv_within(&mut channel, &mut fds, EXCHANGE_LIMIT)
            .await
            .map_err(fail)?
        {
            Some(Message::Listeners { pid, sockets }) => (pid, sockets),
            Some(Message::Refused(why)) => return Err(fail(format!("it refused: {why}"))),
            Some(other) => return Err(fail(format!("unexpected answer {other:?}"))),
            None => return Err(fail("it closed the connection without an answer".into())),
        };
        if fds.len() != handed.len() {
            return Err(fail(format!(
                "it described {} sockets but sent {} descriptors",
                handed.len(),
                fds.len()
            )));
        }
        tracing::info!(
            pid,
            sockets = ?handed.iter().map(|h| format!("{:?} {}", h.role, h.bound)).collect::<Vec<_>>(),
            "taking over from the running process"
        );
        Ok(Predecessor {
            path: path.to_path_buf(),
            pid,
            channel,
            sockets: handed.into_iter().zip(fds.into_iter().map(Some)).collect(),
        })
    }

    /// The upgrade socket it was reached at.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The handed-over socket for the listener `role` configured at `addr`,
    /// if there is one (same role and configured address, or bound to
    /// `addr` exactly), checked to be a TCP listener there and given this
    /// configuration's `backlog`.
    pub(crate) fn take(
        &mut self,
        role: Role,
        addr: SocketAddr,
        backlog: u32,
    ) -> Result<Option<std::net::TcpListener>, Error> {
        let found = self.sockets.iter_mut().find(|(h, fd)| {
            fd.is_some()
                && ((h.role == role && h.configured == addr)
                    || (addr.port() != 0 && h.bound == addr))
        });
        let Some((handed, fd)) = found else {
            return Ok(None);
        };
        let handed = handed.clone();
        let socket = socket2::Socket::from(fd.take().expect("checked above"));
        let checked = (|| {
            if !socket.is_listener()? || socket.r#type()? != socket2::Type::STREAM {
                return Ok(Err("is not a listening TCP socket".to_string()));
            }
            let bound = socket.local_addr()?.as_socket();
            if bound != Some(handed.bound) {
                return Ok(Err(format!("is bound to {bound:?}, not {}", handed.bound)));
            }
            // Listening again only sets the queue's length.
            socket.listen(backlog.min(i32::MAX as u32) as i32)?;
            socket.set_nonblocking(true)?;
            Ok::<_, io::Error>(Ok(()))
        })();
        match checked {
            Ok(Ok(())) => {
                tracing::info!(role = ?role, addr = %handed.bound, "listening socket taken over");
                Ok(Some(socket.into()))
            }
            Ok(Err(reason)) => Err(self.error(format!("the {role:?} socket {reason}"))),
            Err(e) => Err(self.error(format!("the {role:?} socket: {e}"))),
        }
    }

    /// Closes the sockets this configuration has no listener for (they
    /// close for good when the old process exits).
    pub(crate) fn close_unused(&mut self) {
        for (handed, fd) in &mut self.sockets {
            if fd.take().is_some() {
                tracing::warn!(
                    role = ?handed.role,
                    addr = %handed.bound,
                    "the running process listens here but this configuration does not: not taken over; it closes when that process exits"
                );
            }
        }
    }

    fn error(&self, reason: String) -> Error {
        Error::TakeOver {
            path: self.path.clone(),
            reason,
        }
    }

    /// Tells the old process this one serves, and waits for it to say it
    /// drains. A missing answer is logged: both then accept on the same
    /// sockets, which loses nothing.
    pub(crate) async fn ready(mut self) {
        let pid = self.pid;
        if let Err(e) = self.channel.send(&Message::Ready, &[]).await {
            tracing::warn!(
                pid,
                "could not tell the old process this one is ready: {e}; it may still be accepting"
            );
            return;
        }
        let mut fds = Vec::new();
        match recv_within(&mut self.channel, &mut fds, EXCHANGE_LIMIT).await {
            Ok(Some(Message::Draining)) => {
                tracing::info!(
                    pid,
                    "took over: the old process stopped accepting and drains"
                )
            }
            Ok(other) => tracing::warn!(
                pid,
                "the old process answered {other:?} to ready; it may still be accepting"
            ),
            Err(e) => tracing::warn!(
                pid,
                "the old process did not confirm ({e}); it may still be accepting"
            ),
        }
    }

    /// Tells the old process this one cannot serve, and why.
    pub(crate) async fn failed(self, reason: &str) {
        let message = Message::Failed(reason.to_string());
        let _ = tokio::time::timeout(EXCHANGE_LIMIT, self.channel.send(&message, &[])).await;
    }
}

/// The Unix socket where this process waits for its successor.
pub(crate) struct UpgradeSocket {
    /// `server.upgrade_socket`.
    path: PathBuf,
    /// Where it is bound now: `path`, or a temporary name until
    /// [`UpgradeSocket::install`].
    bound_at: PathBuf,
    listener: std::os::unix::net::UnixListener,
    /// The socket file's device and inode: what to remove on exit.
    file: (u64, u64),
}

impl UpgradeSocket {
    /// Binds `path` under a temporary name, mode 0600. Unless this process
    /// takes over from the one at `path`, a live process there is an error.
    pub(crate) fn bind(
        path: &Path,
        taking_over_from: Option<&Path>,
    ) -> Result<UpgradeSocket, Error> {
        let fail = |reason: String| Error::UpgradeSocket {
            path: path.to_path_buf(),
            reason,
        };
        if taking_over_from != Some(path) && std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(fail(format!(
                "a process already waits for upgrades there; take it over with `veer run --take-over {}`",
                path.display()
            )));
        }
        if let Ok(meta) = std::fs::symlink_metadata(path)
            && !meta.file_type().is_socket()
        {
            return Err(fail("exists and is not a socket".into()));
        }
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(format!(".{:x}", std::process::id()));
        let temporary = PathBuf::from(temporary);
        let _ = std::fs::remove_file(&temporary);
        let listener = std::os::unix::net::UnixListener::bind(&temporary)
            .map_err(|e| fail(format!("could not bind {}: {e}", temporary.display())))?;
        let file = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::metadata(&temporary))
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| {
                let _ = std::fs::remove_file(&temporary);
                fail(format!("could not make it private: {e}"))
            })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| fail(e.to_string()))?;
        Ok(UpgradeSocket {
            path: path.to_path_buf(),
            bound_at: temporary,
            listener,
            file,
        })
    }

    /// Moves the socket to its configured path (replacing a predecessor's
    /// or a stale one): from now on a successor finds this process there.
    pub(crate) fn install(&mut self) -> Result<(), Error> {
        std::fs::rename(&self.bound_at, &self.path).map_err(|e| Error::UpgradeSocket {
            path: self.path.clone(),
            reason: format!("could not move {} there: {e}", self.bound_at.display()),
        })?;
        self.bound_at = self.path.clone();
        tracing::info!(path = %self.path.display(), "waiting for upgrades (veer run --take-over)");
        Ok(())
    }
}

impl Drop for UpgradeSocket {
    fn drop(&mut self) {
        // A successor's socket may be there by now: only our own goes.
        let ours = std::fs::symlink_metadata(&self.bound_at)
            .is_ok_and(|m| (m.dev(), m.ino()) == self.file);
        if ours {
            let _ = std::fs::remove_file(&self.bound_at);
        }
    }
}

/// Waits on `socket` for successors, one at a time, until one has taken
/// over (its pid is sent on `handed_over`) or `cancel`. A successor that
/// fails is logged and this process serves on. `sockets` are copies of the
/// listening sockets, dropped when this returns.
pub(crate) async fn serve(
    socket: UpgradeSocket,
    sockets: Vec<(Handed, OwnedFd)>,
    handed_over: tokio::sync::oneshot::Sender<u32>,
    cancel: CancellationToken,
) {
    let listener = match socket
        .listener
        .try_clone()
        .and_then(tokio::net::UnixListener::from_std)
    {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(path = %socket.path.display(), "upgrade socket: {e}; upgrades are off");
            return;
        }
    };
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("upgrade socket: accept failed: {e}");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    }
                }
            },
        };
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            outcome = hand_over(stream, &sockets) => outcome,
        };
        match outcome {
            Ok(pid) => {
                let _ = handed_over.send(pid);
                return;
            }
            Err(reason) => {
                tracing::error!("take-over failed: {reason}; still serving");
            }
        }
    }
}

/// One take-over, from the old process's side: the successor's pid once it
/// is ready, or why not.
async fn hand_over(stream: UnixStream, sockets: &[(Handed, OwnedFd)]) -> Result<u32, String> {
    let uid = stream
        .peer_cred()
        .map_err(|e| format!("could not tell who connected: {e}"))?
        .uid();
    let own = rustix::process::geteuid().as_raw();
    if uid != own && uid != 0 {
        return Err(format!(
            "uid {uid} connected; only uid {own} or root may take over"
        ));
    }
    let mut channel = Channel {
        stream,
        buf: Vec::new(),
    };
    let mut fds = Vec::new();
    let pid = match recv_within(&mut channel, &mut fds, EXCHANGE_LIMIT).await? {
        Some(Message::Hello { version, pid }) if version == VERSION => pid,
        Some(Message::Hello { version, pid }) => {
            let why = format!("this process speaks take-over version {VERSION}, not {version}");
            let _ = channel.send(&Message::Refused(why.clone()), &[]).await;
            return Err(format!("pid {pid}: {why}"));
        }
        Some(other) => return Err(format!("unexpected message {other:?}")),
        None => return Err("the peer closed the connection without a hello".into()),
    };
    let listeners = Message::Listeners {
        pid: std::process::id(),
        sockets: sockets.iter().map(|(h, _)| h.clone()).collect(),
    };
    let borrowed: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
    channel
        .send(&listeners, &borrowed)
        .await
        .map_err(|e| format!("pid {pid}: sending the sockets: {e}"))?;
    tracing::info!(
        pid,
        "listening sockets handed to a new process; serving on until it is ready"
    );
    match recv_within(&mut channel, &mut fds, READY_LIMIT).await {
        Ok(Some(Message::Ready)) => {
            let _ = channel.send(&Message::Draining, &[]).await;
            tracing::info!(pid, "the new process serves: handing over");
            Ok(pid)
        }
        Ok(Some(Message::Failed(why))) => Err(format!(
            "the new process (pid {pid}) could not start: {why}"
        )),
        Ok(Some(other)) => Err(format!("pid {pid}: unexpected message {other:?}")),
        Ok(None) => Err(format!(
            "the new process (pid {pid}) closed the connection before it was ready (did it exit? see its log)"
        )),
        Err(e) => Err(format!("the new process (pid {pid}): {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Channel, Channel) {
        let (a, b) = UnixStream::pair().unwrap();
        let channel = |stream| Channel {
            stream,
            buf: Vec::new(),
        };
        (channel(a), channel(b))
    }

    #[tokio::test]
    async fn a_listening_socket_sent_over_the_channel_accepts_the_same_connections() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // A connection waiting in the accept queue before the hand-over.
        let waiting = std::net::TcpStream::connect(addr).unwrap();
        let (old, mut new) = pair();
        let handed = Handed {
            role: Role::Listen,
            configured: "127.0.0.1:0".parse().unwrap(),
            bound: addr,
        };
        let message = Message::Listeners {
            pid: 1,
            sockets: vec![handed],
        };
        old.send(&message, &[listener.as_fd()]).await.unwrap();
        drop(listener);
        let mut fds = Vec::new();
        let got = new.recv(&mut fds).await.unwrap();
        assert!(matches!(got, Some(Message::Listeners { ref sockets, .. }) if sockets.len() == 1));
        assert_eq!(fds.len(), 1);
        let received = std::net::TcpListener::from(fds.pop().unwrap());
        assert_eq!(received.local_addr().unwrap(), addr);
        let (accepted, _) = received.accept().unwrap();
        assert_eq!(accepted.peer_addr().unwrap(), waiting.local_addr().unwrap());
    }

    #[tokio::test]
    async fn messages_split_and_joined_arrive_one_line_each() {
        let (a, mut b) = pair();
        a.send(&Message::Ready, &[]).await.unwrap();
        a.send(&Message::Failed("bad\nconfig".into()), &[])
            .await
            .unwrap();
        drop(a);
        let mut fds = Vec::new();
        assert!(matches!(
            b.recv(&mut fds).await.unwrap(),
            Some(Message::Ready)
        ));
        assert!(
            matches!(b.recv(&mut fds).await.unwrap(), Some(Message::Failed(w)) if w == "bad\nconfig")
        );
        assert!(b.recv(&mut fds).await.unwrap().is_none());
        assert!(fds.is_empty());
    }

    #[tokio::test]
    async fn a_handed_socket_is_taken_by_role_and_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut predecessor = Predecessor {
            path: "/nowhere".into(),
            pid: 1,
            channel: Channel {
                stream: b,
                buf: Vec::new(),
            },
            sockets: vec![(
                Handed {
                    role: Role::Listen,
                    configured: any,
                    bound: addr,
                },
                Some(OwnedFd::from(listener)),
            )],
        };
        // Another role on "any port" is not this one.
        assert!(predecessor.take(Role::Admin, any, 128).unwrap().is_none());
        let taken = predecessor.take(Role::Listen, any, 128).unwrap().unwrap();
        assert_eq!(taken.local_addr().unwrap(), addr);
        // Taken once only.
        assert!(predecessor.take(Role::Listen, addr, 128).unwrap().is_none());
    }
}
