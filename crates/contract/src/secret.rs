//! [`SecretValue`]: a string that never prints and is wiped when dropped.

use std::fmt;
use zeroize::Zeroizing;

/// The value of an environment variable, or any other secret string.
///
/// `Debug` and `Display` print `[redacted]`; the bytes are zeroized when the
/// value is dropped. The only way to read it is [`SecretValue::expose`], so
/// every place that handles the plaintext is easy to find.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    /// Wraps `value`, taking ownership so that no unwiped copy stays behind.
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The plaintext. Callers must not log, print or persist it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in bytes of the plaintext.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the plaintext is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for SecretValue {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for SecretValue {
    fn from(value: &str) -> Self {
        Self::new(value.to_owned())
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = SecretValue::from("hunter2-canary");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some([redacted])");
        assert_eq!(s.expose(), "hunter2-canary");
    }
}
