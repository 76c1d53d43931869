//! What the registry's HTTP conversations share: the `Retry-After` header
//! read as a duration, the "cannot reach" error, and durations in the words
//! a message uses. Kept apart from [`crate::client`] so that `auth`, `ecr`
//! and `body`, which the client uses, need not import it back.

use crate::error::{Category, PullError};
use crate::ratelimit::parse_retry_after;
use reqwest::header::{self, HeaderMap};
use std::time::{Duration, SystemTime};
use url::Url;

/// `cannot reach REGISTRY at ENDPOINT: REASON`, an [`Category::Unreachable`].
pub(crate) fn unreachable(registry: &str, base: &Url, reason: &str) -> PullError {
    PullError::new(
        Category::Unreachable,
        format!(
            "cannot reach {registry} at {}: {reason}",
            base.as_str().trim_end_matches('/')
        ),
    )
    .registry(registry)
}

/// `Retry-After` as a duration, if present and valid.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(v, SystemTime::now()).ok()
}

/// `90 s`, `4 min`, `2 h 5 min`.
pub(crate) fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 120 {
        format!("{} s", s.max(1))
    } else if s < 7200 {
        format!("{} min", s.div_ceil(60))
    } else {
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(human_duration(Duration::from_secs(30)), "30 s");
        assert_eq!(human_duration(Duration::from_secs(600)), "10 min");
        assert_eq!(human_duration(Duration::from_secs(21600)), "6 h 0 min");
    }
}
