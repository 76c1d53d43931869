//! [`RetryPolicy`]: exponential backoff with jitter inside a time budget.
//!
//! Retry lives here and in the HTTP layer that uses it ([`crate::client`]),
//! never at call sites. What is retryable is decided by the response, in one
//! place: connection errors, resets and timeouts, `408`, `429` and `5xx`.
//! `UNAUTHORIZED` after a fresh login, `DENIED`, `NAME_UNKNOWN` and
//! `MANIFEST_UNKNOWN` never are.

use std::time::{Duration, Instant};

/// How hard to try before giving up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most attempts for one request, the first included.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled for each later one.
    pub base_delay: Duration,
    /// Longest single delay (a `Retry-After` may ask for more, within budget).
    pub max_delay: Duration,
    /// Total time one request may spend waiting and retrying, the attempts
    /// included (each attempt is cut off at what is left of it). A blob
    /// download gets the whole budget again whenever it receives bytes.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
            budget: Duration::from_secs(120),
        }
    }
}

/// The retry state of one request.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: RetryPolicy,
    started: Instant,
    attempt: u32,
}

/// What to do after a failed attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Wait this long, then try again.
    RetryAfter(Duration),
    /// Give up: attempts or budget exhausted, or the server's wait is longer
    /// than what is left of the budget.
    GiveUp,
}

impl Backoff {
    pub(crate) fn new(policy: RetryPolicy) -> Self {
        Self {
            policy,
            started: Instant::now(),
            attempt: 1,
        }
    }

    /// Attempts made so far.
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// What is left of the budget. Every attempt is bounded by it (a server
    /// that accepts and then sends nothing must not outlast the budget).
    pub(crate) fn remaining(&self) -> Duration {
        self.policy.budget.saturating_sub(self.started.elapsed())
    }

    /// The budget this backoff runs under.
    pub(crate) fn budget(&self) -> Duration {
        self.policy.budget
    }

    /// The last attempt made progress (a download received bytes): start
    /// over, with the whole budget and all attempts. The budget bounds the
    /// time spent without progress, not the length of a large download.
    pub(crate) fn progressed(&mut self) {
        self.started = Instant::now();
        self.attempt = 1;
    }

    /// Decides the next step after a failed attempt; `server_wait` is a
    /// `Retry-After` the server sent.
    pub(crate) fn next(&mut self, server_wait: Option<Duration>) -> Next {
        if self.attempt >= self.policy.max_attempts {
            return Next::GiveUp;
        }
        let exp = self
            .policy
            .base_delay
            .saturating_mul(1u32 << (self.attempt - 1).min(16))
            .min(self.policy.max_delay);
        // Full jitter on the upper half: spreads retries of many clients.
        let jittered = exp.mul_f64(0.5 + fastrand::f64() * 0.5);
        let delay = match server_wait {
            Some(wait) => wait.max(jittered),
            None => jittered,
        };
        let left = self.policy.budget.saturating_sub(self.started.elapsed());
        if delay > left {
            return Next::GiveUp;
        }
        self.attempt += 1;
        Next::RetryAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_exponentially_within_budget() {
        let policy = RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            budget: Duration::from_secs(10),
        };
        let mut b = Backoff::new(policy);
        let mut delays = Vec::new();
        while let Next::RetryAfter(d) = b.next(None) {
            delays.push(d);
        }
        assert_eq!(delays.len(), 3);
        for (i, d) in delays.iter().enumerate() {
            let full = Duration::from_millis(100 << i);
            assert!(*d >= full / 2 && *d <= full, "{i}: {d:?}");
        }
    }

    #[test]
    fn honours_retry_after_and_gives_up_past_the_budget() {
        let policy = RetryPolicy {
            budget: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        let mut b = Backoff::new(policy);
        assert_eq!(
            b.next(Some(Duration::from_secs(3))),
            Next::RetryAfter(Duration::from_secs(3))
        );
        assert_eq!(b.next(Some(Duration::from_secs(60))), Next::GiveUp);
    }

    #[test]
    fn progress_restores_the_budget() {
        let policy = RetryPolicy {
            max_attempts: 2,
            budget: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        let mut b = Backoff::new(policy);
        assert!(matches!(b.next(None), Next::RetryAfter(_)));
        assert_eq!(b.next(None), Next::GiveUp);
        b.progressed();
        assert!(b.remaining() > Duration::from_secs(4));
        assert!(matches!(b.next(None), Next::RetryAfter(_)));
    }
}
