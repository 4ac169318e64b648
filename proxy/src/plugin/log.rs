//! Log budgets: how many lines about a plugin may be written per second.
//!
//! Each plugin version has one for the lines it logs itself (the `log`
//! import), and each pool's balancer one for the host's lines about its
//! plugin (traps, deadline misses, bad answers), so a chatty plugin cannot
//! hide its own failures, nor one failing plugin another's. Lines over a
//! budget are dropped and counted; the next line written after them says how
//! many were dropped.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

/// Lines per second a plugin may log through the `log` import.
pub const PLUGIN_LINES_PER_SECOND: u64 = 10;
/// Lines per second the host writes about one pool's plugin.
pub const HOST_LINES_PER_SECOND: u64 = 10;
/// Longest message a plugin may log, bytes; longer ones are cut.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// A budget of lines per second.
#[derive(Debug)]
pub struct LogBudget {
    per_second: u64,
    /// The second (since the epoch, +1) the count is for.
    window: AtomicU64,
    count: AtomicU64,
    dropped: AtomicU64,
}

impl LogBudget {
    /// A budget of `per_second` lines.
    pub const fn new(per_second: u64) -> LogBudget {
        LogBudget {
            per_second,
            window: AtomicU64::new(0),
            count: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether a line may be written now: `Some(n)` with the number of lines
    /// dropped since the last one written (say so in the line when `n > 0`),
    /// `None` when over budget (the line is counted as dropped).
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(crate::stats::now_ms())
    }

    fn allow_at(&self, now_ms: u64) -> Option<u64> {
        let second = now_ms / 1000 + 1;
        // Over budget in this second: no write to the shared window.
        if self.window.load(Relaxed) == second && self.count.load(Relaxed) >= self.per_second {
            self.dropped.fetch_add(1, Relaxed);
            return None;
        }
        if self.window.swap(second, Relaxed) != second {
            self.count.store(0, Relaxed);
        }
        if self.count.fetch_add(1, Relaxed) < self.per_second {
            Some(self.dropped.swap(0, Relaxed))
        } else {
            self.dropped.fetch_add(1, Relaxed);
            None
        }
    }

    /// Lines dropped and not yet reported.
    #[cfg(test)]
    fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

/// `message` made safe for one log line: control characters (newlines
/// included: a plugin must not forge a line of its own) written as escapes,
/// and cut to [`MAX_MESSAGE_BYTES`] on a character boundary, saying how much
/// was cut.
pub fn cut(message: &str) -> std::borrow::Cow<'_, str> {
    if message.chars().any(char::is_control) {
        let escaped: String = message
            .chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect();
        return std::borrow::Cow::Owned(cut(&escaped).into_owned());
    }
    if message.len() <= MAX_MESSAGE_BYTES {
        return message.into();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… ({} more bytes cut)",
        &message[..end],
        message.len() - end
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_lets_its_lines_through_then_counts_the_rest_and_reports_them_next_second() {
        let budget = LogBudget::new(3);
        let at = 5_000;
        assert_eq!(budget.allow_at(at), Some(0));
        assert_eq!(budget.allow_at(at + 1), Some(0));
        assert_eq!(budget.allow_at(at + 2), Some(0));
        assert_eq!(budget.allow_at(at + 3), None);
        assert_eq!(budget.allow_at(at + 4), None);
        assert_eq!(budget.dropped(), 2);
        assert_eq!(budget.allow_at(at + 1000), Some(2));
        assert_eq!(budget.dropped(), 0);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = cut(&long);
        assert!(cut.len() < MAX_MESSAGE_BYTES + 40, "{}", cut.len());
        assert!(cut.ends_with(&format!(
            "({} more bytes cut)",
            long.len() - MAX_MESSAGE_BYTES
        )));
        assert_eq!(super::cut("short"), "short");
        assert_eq!(
            super::cut("one\nfake line\r\u{1b}[31m"),
            "one\\nfake line\\r\\u{1b}[31m"
        );
    }
}
