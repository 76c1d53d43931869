//! [`BootOutcome`]: the boot agent's last serial-log line, the boundary
//! between the boot agent and the node, which derives the CVM's status from
//! it and from the agent's exit code.

use crate::Category;
use std::time::Duration;

/// How a boot ended.
#[derive(Clone, Debug, PartialEq)]
pub enum BootOutcome {
    /// `BOOT OK in 1.23 s`.
    Ok {
        /// The boot's duration.
        elapsed: Duration,
    },
    /// `BOOT FAILED: <category>: <message>`.
    Failed {
        /// What kind of failure.
        category: Category,
        /// One sentence.
        message: String,
    },
}

const OK: &str = "BOOT OK in ";
const FAILED: &str = "BOOT FAILED: ";

impl BootOutcome {
    /// The line, without the serial log's timestamp.
    pub fn render(&self) -> String {
        match self {
            BootOutcome::Ok { elapsed } => format!("{OK}{:.2} s", elapsed.as_secs_f64()),
            BootOutcome::Failed { category, message } => {
                format!("{FAILED}{category}: {message}")
            }
        }
    }

    /// Parses a line's text (the serial log's `[timestamp] ` prefix removed).
    pub fn parse(text: &str) -> Option<Self> {
        if let Some(rest) = text.strip_prefix(OK) {
            let secs: f64 = rest.strip_suffix(" s")?.parse().ok()?;
            if !secs.is_finite() || secs < 0.0 {
                return None;
            }
            return Some(BootOutcome::Ok {
                elapsed: Duration::from_secs_f64(secs),
            });
        }
        let rest = text.strip_prefix(FAILED)?;
        let (cat, message) = rest.split_once(": ")?;
        Some(BootOutcome::Failed {
            category: cat.parse().ok()?,
            message: message.to_owned(),
        })
    }

    /// The process exit code a boot agent with this outcome exits with.
    pub fn exit_code(&self) -> i32 {
        match self {
            BootOutcome::Ok { .. } => 0,
            BootOutcome::Failed { category, .. } => category.exit_code() as i32,
        }
    }

    /// The outcome a node may believe: the final line's, only when the
    /// agent's exit code matches it. A tenant who smuggles a `BOOT OK` line
    /// into the log of a failed boot gains nothing: the exit code disagrees.
    pub fn confirmed(last_line: Option<&str>, exit_code: Option<i32>) -> Option<Self> {
        let outcome = Self::parse(last_line?)?;
        (Some(outcome.exit_code()) == exit_code).then_some(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_parse_round_trip() {
        let ok = BootOutcome::Ok {
            elapsed: Duration::from_millis(1230),
        };
        assert_eq!(ok.render(), "BOOT OK in 1.23 s");
        assert!(matches!(
            BootOutcome::parse(&ok.render()),
            Some(BootOutcome::Ok { .. })
        ));
        let f = BootOutcome::Failed {
            category: Category::CredentialsRejected,
            message: "the registry refused: a: b".into(),
        };
        assert_eq!(BootOutcome::parse(&f.render()), Some(f.clone()));
        assert_eq!(f.exit_code(), 3);
        assert_eq!(BootOutcome::parse("BOOT FAILED: nonsense: x"), None);
        assert_eq!(BootOutcome::parse("compose: BOOT OK in 1 s"), None);
    }

    #[test]
    fn confirmed_needs_the_matching_exit_code() {
        assert!(BootOutcome::confirmed(Some("BOOT OK in 0.50 s"), Some(0)).is_some());
        assert!(BootOutcome::confirmed(Some("BOOT OK in 0.50 s"), Some(3)).is_none());
        assert!(BootOutcome::confirmed(Some("BOOT OK in 0.50 s"), None).is_none());
        assert!(BootOutcome::confirmed(Some("BOOT FAILED: runtime: x"), Some(10)).is_some());
    }
}
