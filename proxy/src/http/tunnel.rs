//! Protocol upgrades (WebSocket and any HTTP/1.1 `Upgrade`): the strategy
//! chooses the backend as for any request; when the backend answers `101
//! Switching Protocols`, both connections are handed over and bytes flow
//! both ways until either side closes or nothing moves for the pool's
//! `read_timeout_ms`. Tunnels are tracked tasks: shutdown waits for them up
//! to its grace period.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::metrics::Metrics;
use crate::stats::now_ms;

/// Joins the client's and the backend's upgraded connections.
pub(super) async fn run(
    client: OnUpgrade,
    backend: OnUpgrade,
    idle: Duration,
    metrics: Arc<Metrics>,
) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!("upgrade did not complete: {e}");
            return;
        }
    };
    Metrics::inc(&metrics.tunnels);
    let (mut client_read, mut client_write) = tokio::io::split(TokioIo::new(client));
    let (mut backend_read, mut backend_write) = tokio::io::split(TokioIo::new(backend));
    let last = AtomicU64::new(now_ms());
    let up = pump(&mut client_read, &mut backend_write, &last);
    let down = pump(&mut backend_read, &mut client_write, &last);
    let idle_ms = idle.as_millis() as u64;
    let watchdog = async {
        loop {
            let quiet = now_ms().saturating_sub(last.load(Relaxed));
            if quiet >= idle_ms {
                return;
            }
            tokio::time::sleep(Duration::from_millis(idle_ms - quiet)).await;
        }
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = watchdog => Metrics::inc(&metrics.tunnel_idle_closes),
    }
}

/// Copies one direction until end of stream (then shuts the writer down).
async fn pump<R, W>(from: &mut R, to: &mut W, last: &AtomicU64) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        last.store(now_ms(), Relaxed);
    }
}
