//! [`RetryPolicy`]: exponential backoff with jitter inside a time budget.
//!
//! `Budget` is the one retry driver: every loop that retries uses it, and
//! `Retry-After` is honoured in `Budget::retry`. What is retryable is
//! decided by the response, in one place per conversation: connection errors,
//! resets and timeouts, `408`, `429` and `5xx` (`client::send`; the token
//! service in `auth`, the ECR API in `ecr`). `UNAUTHORIZED` after a fresh
//! login, `DENIED`, `NAME_UNKNOWN` and `MANIFEST_UNKNOWN` never are.

use std::sync::Mutex;
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

/// The retry budget of one request, and the one retry driver: every loop
/// that retries (a request in [`crate::client`], a token fetch in
/// [`crate::auth`], the ECR token in [`crate::ecr`], a blob download in
/// [`crate::pull`]) asks [`Budget::retry`] what to do after a transient
/// failure, and bounds each attempt with [`Budget::bounded`].
///
/// One request has one budget: the loops working for it (a blob download,
/// the request it sends, the token that request needs, the ECR token under
/// that) share it by reference, so time and attempts are counted once, not
/// once per level.
#[derive(Debug)]
pub(crate) struct Budget {
    policy: RetryPolicy,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    started: Instant,
    attempt: u32,
}

/// The budget is spent: no more attempts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct GaveUp {
    /// Attempts made.
    pub(crate) attempts: u32,
}

impl Budget {
    pub(crate) fn new(policy: RetryPolicy) -> Self {
        Self {
            policy,
            state: Mutex::new(State {
                started: Instant::now(),
                attempt: 1,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attempts made so far.
    pub(crate) fn attempt(&self) -> u32 {
        self.state().attempt
    }

    /// What is left of the budget. Every attempt is bounded by it (a server
    /// that accepts and then sends nothing must not outlast the budget).
    pub(crate) fn remaining(&self) -> Duration {
        self.policy
            .budget
            .saturating_sub(self.state().started.elapsed())
    }

    /// The whole budget.
    pub(crate) fn total(&self) -> Duration {
        self.policy.budget
    }

    /// The last attempt made progress (a download received bytes): start
    /// over, with the whole budget and all attempts. The budget bounds the
    /// time spent without progress, not the length of a large download.
    pub(crate) fn progressed(&self) {
        let mut s = self.state();
        s.started = Instant::now();
        s.attempt = 1;
    }

    /// `fut`, cut off at what is left of the budget: `None` if the budget
    /// ran out first.
    pub(crate) async fn bounded<F: std::future::Future>(&self, fut: F) -> Option<F::Output> {
        tokio::time::timeout(self.remaining(), fut).await.ok()
    }

    /// The driver, after a transient failure: decides whether to try again
    /// and how long to wait first (exponential backoff with jitter, at least
    /// the server's `Retry-After` if it sent one: this is where `Retry-After`
    /// is honoured), tells `on_retry` (the attempt about to be made and the
    /// wait), sleeps, and returns `Ok`. `Err` when attempts or budget are
    /// spent, or the server's wait is longer than what is left.
    pub(crate) async fn retry(
        &self,
        server_wait: Option<Duration>,
        on_retry: impl FnOnce(u32, Duration),
    ) -> Result<(), GaveUp> {
        let delay = self.next(server_wait)?;
        on_retry(self.attempt(), delay);
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// The decision of [`Budget::retry`], without the sleep.
    fn next(&self, server_wait: Option<Duration>) -> Result<Duration, GaveUp> {
        let mut s = self.state();
        let gave_up = GaveUp {
            attempts: s.attempt,
        };
        if s.attempt >= self.policy.max_attempts {
            return Err(gave_up);
        }
        let exp = self
            .policy
            .base_delay
            .saturating_mul(1u32 << (s.attempt - 1).min(16))
            .min(self.policy.max_delay);
        // Full jitter on the upper half: spreads retries of many clients.
        let jittered = exp.mul_f64(0.5 + fastrand::f64() * 0.5);
        let delay = match server_wait {
            Some(wait) => wait.max(jittered),
            None => jittered,
        };
        // A retry is worth making only if, after the wait, the attempt
        // itself still has time: otherwise it would be cut off by the
        // budget and reported as "no answer" instead of the registry's last
        // answer (a 503 became `unreachable` on a busy machine).
        let reserve = (self.policy.budget / 4).min(Duration::from_secs(1));
        if delay + reserve > self.policy.budget.saturating_sub(s.started.elapsed()) {
            return Err(gave_up);
        }
        s.attempt += 1;
        Ok(delay)
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
        let b = Budget::new(policy);
        let mut delays = Vec::new();
        while let Ok(d) = b.next(None) {
            delays.push(d);
        }
        assert_eq!(delays.len(), 3);
        assert_eq!(b.next(None), Err(GaveUp { attempts: 4 }));
        for (i, d) in delays.iter().enumerate() {
            let full = Duration::from_millis(100 << i);
            assert!(*d >= full / 2 && *d <= full, "{i}: {d:?}");
        }
    }

    #[test]
    fn no_retry_whose_attempt_would_have_no_time_left() {
        let policy = RetryPolicy {
            budget: Duration::from_secs(2),
            ..RetryPolicy::default()
        };
        let b = Budget::new(policy);
        // 1.8 s of waiting would leave the attempt 0.2 s: give up now, with
        // the last answer, rather than report a cut-off attempt.
        assert_eq!(
            b.next(Some(Duration::from_millis(1800))),
            Err(GaveUp { attempts: 1 })
        );
        assert!(b.next(Some(Duration::from_millis(1000))).is_ok());
    }

    #[test]
    fn honours_retry_after_and_gives_up_past_the_budget() {
        let policy = RetryPolicy {
            budget: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        let b = Budget::new(policy);
        assert_eq!(
            b.next(Some(Duration::from_secs(3))),
            Ok(Duration::from_secs(3))
        );
        assert_eq!(
            b.next(Some(Duration::from_secs(60))),
            Err(GaveUp { attempts: 2 })
        );
    }

    #[test]
    fn progress_restores_the_budget() {
        let policy = RetryPolicy {
            max_attempts: 2,
            budget: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        let b = Budget::new(policy);
        assert!(b.next(None).is_ok());
        assert!(b.next(None).is_err());
        b.progressed();
        assert!(b.remaining() > Duration::from_secs(4));
        assert!(b.next(None).is_ok());
    }

    #[tokio::test]
    async fn the_driver_reports_the_attempt_and_sleeps_the_wait() {
        let b = Budget::new(RetryPolicy::default());
        let mut seen = None;
        let before = Instant::now();
        let wait = Duration::from_millis(300);
        b.retry(Some(wait), |attempt, delay| seen = Some((attempt, delay)))
            .await
            .unwrap();
        assert_eq!(seen, Some((2, wait)));
        assert!(before.elapsed() >= wait);
    }
}
