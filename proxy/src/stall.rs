//! A stall timer for a stream that should keep moving: the deadline moves on
//! with every bit of progress (a clock read, no timer work), and a timer is
//! armed only while the stream is actually waiting, then reset in place.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// See the module docs.
pub(crate) struct StallTimer {
    limit: Duration,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl StallTimer {
    /// A timer that fires after `limit` without progress.
    pub(crate) fn new(limit: Duration) -> StallTimer {
        StallTimer {
            limit,
            deadline: Instant::now() + limit,
            timer: None,
        }
    }

    /// The stall limit.
    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    /// The stream moved: the deadline starts again.
    pub(crate) fn progressed(&mut self) {
        self.deadline = Instant::now() + self.limit;
    }

    /// Called while the stream waits: whether the limit has passed (if not,
    /// `cx` is woken when it does).
    pub(crate) fn poll_stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}
