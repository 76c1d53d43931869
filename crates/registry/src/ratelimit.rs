//! Docker Hub's pull-rate headers and the `Retry-After` header.
//!
//! Docker Hub answers manifest requests with `ratelimit-limit: 100;w=21600`
//! and `ratelimit-remaining: 76;w=21600` (the IETF RateLimit header draft:
//! a count, then `;w=` the window in seconds). Over the limit it answers
//! `429 TOOMANYREQUESTS`, usually with `Retry-After`.

use std::fmt;
use std::time::{Duration, SystemTime};

/// A registry's pull quota as reported by its `ratelimit-*` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Pulls allowed per window.
    pub limit: u64,
    /// Pulls left in the current window, if the registry said.
    pub remaining: Option<u64>,
    /// Length of the window in seconds, if the registry said.
    pub window_secs: Option<u64>,
}

impl RateLimit {
    /// Parses the values of the `ratelimit-limit` header and, if present,
    /// the `ratelimit-remaining` header. The window comes from `;w=` on
    /// the limit, or on the remaining count if the limit has none.
    pub fn from_headers(limit: &str, remaining: Option<&str>) -> Result<Self, RateLimitError> {
        let (limit, limit_window) =
            parse_quota(limit).ok_or_else(|| RateLimitError::InvalidHeader {
                header: "ratelimit-limit",
                value: limit.to_owned(),
            })?;
        let (remaining, remaining_window) = match remaining {
            Some(value) => {
                let (count, window) =
                    parse_quota(value).ok_or_else(|| RateLimitError::InvalidHeader {
                        header: "ratelimit-remaining",
                        value: value.to_owned(),
                    })?;
                (Some(count), window)
            }
            None => (None, None),
        };
        Ok(Self {
            limit,
            remaining,
            window_secs: limit_window.or(remaining_window),
        })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let noun = |n: u64| if n == 1 { "pull" } else { "pulls" };
        match self.remaining {
            Some(remaining) => {
                write!(f, "{remaining} of {} {} left", self.limit, noun(self.limit))?
            }
            None => write!(f, "a limit of {} {}", self.limit, noun(self.limit))?,
        }
        if let Some(window) = self.window_secs {
            let window = format_window(window);
            match self.remaining {
                Some(_) => write!(f, " in this {window} window")?,
                None => write!(f, " per {window} window")?,
            }
        }
        Ok(())
    }
}

/// `N` or `N;w=SECONDS` (other `;key=value` parameters are ignored).
fn parse_quota(value: &str) -> Option<(u64, Option<u64>)> {
    let mut parts = value.split(';');
    let count = parts.next()?.trim().parse().ok()?;
    let mut window = None;
    for param in parts {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        if key.trim().eq_ignore_ascii_case("w") {
            window = Some(value.trim().parse().ok()?);
        }
    }
    Some((count, window))
}

/// `21600` → `6 h`, `900` → `15 min`, `45` → `45 s`.
fn format_window(secs: u64) -> String {
    if secs >= 3600 && secs.is_multiple_of(3600) {
        format!("{} h", secs / 3600)
    } else if secs >= 60 && secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}

/// How long a `Retry-After` header asks to wait, counted from `now`.
///
/// The value is either a number of seconds or an HTTP-date; a date in the
/// past means "retry now" ([`Duration::ZERO`]).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Result<Duration, RateLimitError> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse().map(Duration::from_secs).map_err(|_| {
            RateLimitError::InvalidRetryAfter {
                value: value.to_owned(),
            }
        });
    }
    let at = httpdate::parse_http_date(value).map_err(|_| RateLimitError::InvalidRetryAfter {
        value: value.to_owned(),
    })?;
    Ok(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A rate-limit header that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    /// A `ratelimit-*` header is not `N` or `N;w=SECONDS`.
    #[error(
        "header {header} is `{value}`, expected a count with an optional window like `100;w=21600`"
    )]
    InvalidHeader {
        /// Which header.
        header: &'static str,
        /// Its value.
        value: String,
    },
    /// `Retry-After` is neither seconds nor an HTTP-date.
    #[error(
        "header Retry-After is `{value}`, expected seconds like `120` or an HTTP-date like `Wed, 21 Oct 2015 07:28:00 GMT`"
    )]
    InvalidRetryAfter {
        /// Its value.
        value: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_headers() {
        let rl = RateLimit::from_headers("100;w=21600", Some("76;w=21600")).unwrap();
        assert_eq!(
            rl,
            RateLimit {
                limit: 100,
                remaining: Some(76),
                window_secs: Some(21600)
            }
        );
        assert_eq!(rl.to_string(), "76 of 100 pulls left in this 6 h window");
    }

    #[test]
    fn parses_plain_counts_and_partial_headers() {
        let rl = RateLimit::from_headers("200", Some("0")).unwrap();
        assert_eq!(rl.window_secs, None);
        assert_eq!(rl.to_string(), "0 of 200 pulls left");
        let rl = RateLimit::from_headers(" 100 ; w=900 ", None).unwrap();
        assert_eq!(rl.to_string(), "a limit of 100 pulls per 15 min window");
        let rl = RateLimit::from_headers("1", Some("1;w=45")).unwrap();
        assert_eq!(rl.window_secs, Some(45));
        assert_eq!(rl.to_string(), "1 of 1 pull left in this 45 s window");
        let rl = RateLimit::from_headers("100;w=21600;burst=5", None).unwrap();
        assert_eq!(rl.window_secs, Some(21600));
    }

    #[test]
    fn rejects_malformed_headers() {
        let e = RateLimit::from_headers("lots", None).unwrap_err();
        assert_eq!(
            e,
            RateLimitError::InvalidHeader {
                header: "ratelimit-limit",
                value: "lots".into()
            }
        );
        assert!(e.to_string().contains("ratelimit-limit"));
        assert!(RateLimit::from_headers("100", Some("-1")).is_err());
        assert!(RateLimit::from_headers("100;w=x", None).is_err());
        assert!(RateLimit::from_headers("", None).is_err());
    }

    #[test]
    fn retry_after_seconds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_retry_after("120", now).unwrap(),
            Duration::from_secs(120)
        );
        assert_eq!(parse_retry_after(" 0 ", now).unwrap(), Duration::ZERO);
        assert!(parse_retry_after("-5", now).is_err());
        assert!(parse_retry_after("1.5", now).is_err());
        assert!(parse_retry_after("", now).is_err());
        assert!(parse_retry_after("99999999999999999999999", now).is_err());
    }

    #[test]
    fn retry_after_http_date() {
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        let at = httpdate::parse_http_date(date).unwrap();
        let now = at - Duration::from_secs(90);
        assert_eq!(
            parse_retry_after(date, now).unwrap(),
            Duration::from_secs(90)
        );
        // A date in the past means retry now.
        let later = at + Duration::from_secs(5);
        assert_eq!(parse_retry_after(date, later).unwrap(), Duration::ZERO);
        let e = parse_retry_after("tomorrow", now).unwrap_err();
        assert!(e.to_string().contains("`tomorrow`"));
    }
}
