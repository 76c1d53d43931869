//! [`Env`]: the ordered variables of a CVM, their merge and their limits.

use crate::SecretValue;
use std::fmt;

/// Where a variable came from, for error messages: a file and line, or a
/// command-line argument. Never holds the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Line `line` (1-based) of the file or stream named `source`.
    Line {
        /// A name for the input, usually its path.
        source: String,
        /// 1-based line where the variable's definition starts.
        line: usize,
    },
    /// A `KEY=VALUE` argument given on the command line.
    Argument,
    /// Decrypted from a sealed env.
    Sealed,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Line { source, line } => write!(f, "{source}:{line}"),
            Origin::Argument => f.write_str("command-line argument"),
            Origin::Sealed => f.write_str("sealed env"),
        }
    }
}

/// One environment variable. The key is public, the value is secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvVar {
    /// The variable's name.
    pub key: String,
    /// The variable's value; redacted when printed.
    pub value: SecretValue,
    /// Where it was defined.
    pub origin: Origin,
}

impl EnvVar {
    /// A variable with the given key, value and origin.
    pub fn new(key: impl Into<String>, value: impl Into<SecretValue>, origin: Origin) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            origin,
        }
    }
}

/// The limits a CVM enforces on its env, defined with the name rules in
/// [`contract::env_rules`] (the control plane tells them to the web console).
pub use contract::env_rules::Limits;

/// A variable or a set of variables breaks a rule. Names the key and where
/// it was defined, never the value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The key does not match `^[A-Za-z_][A-Za-z0-9_]*$`.
    #[error(
        "{origin}: `{key}` is not a valid variable name (use letters, digits and `_`, not starting with a digit)"
    )]
    InvalidKey {
        /// The offending key (printable form).
        key: String,
        /// Where it was defined.
        origin: Origin,
    },
    /// The key is longer than allowed.
    #[error("{origin}: variable name `{key}` is {len} bytes long; at most {max} are allowed")]
    KeyTooLong {
        /// The offending key, shortened.
        key: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
        /// Where it was defined.
        origin: Origin,
    },
    /// The value is longer than allowed.
    #[error("{origin}: the value of `{key}` is {len} bytes long; at most {max} are allowed")]
    ValueTooLong {
        /// The variable's key.
        key: String,
        /// The value's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
        /// Where it was defined.
        origin: Origin,
    },
    /// Too many variables.
    #[error("the env has {count} variables; at most {max} are allowed")]
    TooManyVars {
        /// How many there are.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Keys and values together are too large.
    #[error(
        "the env's keys and values add up to {total} bytes; at most {max} are allowed (the limit was passed at `{key}`, {origin})"
    )]
    TooLarge {
        /// The total size in bytes.
        total: usize,
        /// The limit.
        max: usize,
        /// The key at which the limit was passed.
        key: String,
        /// Where that key was defined.
        origin: Origin,
    },
    /// The same key is defined twice in one input.
    #[error("{origin}: `{key}` is defined again (first at {first}); keep one definition")]
    DuplicateKey {
        /// The repeated key.
        key: String,
        /// The first definition.
        first: Origin,
        /// The repeated definition.
        origin: Origin,
    },
}

/// Whether `key` is a valid variable name: `^[A-Za-z_][A-Za-z0-9_]*$`, at
/// most [`contract::env_rules::MAX_KEY_LEN`] bytes. The one rule, shared with the control plane.
pub use contract::env_rules::is_valid_key;

/// Shortens a key for an error message so a huge key cannot flood the output.
fn printable_key(key: &str) -> String {
    let mut out: String = key.chars().take(64).flat_map(char::escape_debug).collect();
    if key.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// An ordered list of environment variables with unique keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env {
    vars: Vec<EnvVar>,
}

impl Env {
    /// An empty env.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds an env from variables of one input, rejecting a key defined twice.
    pub fn from_vars(vars: Vec<EnvVar>) -> Result<Self, ValidationError> {
        let mut env = Env::new();
        for var in vars {
            if let Some(first) = env.get_var(&var.key) {
                return Err(ValidationError::DuplicateKey {
                    key: printable_key(&var.key),
                    first: first.origin.clone(),
                    origin: var.origin,
                });
            }
            env.vars.push(var);
        }
        Ok(env)
    }

    /// Sets `var`: replaces the value of an existing key in place (so order is
    /// that of first definition), or appends a new key.
    pub fn set(&mut self, var: EnvVar) {
        match self.vars.iter_mut().find(|v| v.key == var.key) {
            Some(existing) => *existing = var,
            None => self.vars.push(var),
        }
    }

    /// Merges `other` over `self`: later inputs override earlier ones.
    pub fn merge(&mut self, other: Env) {
        for var in other.vars {
            self.set(var);
        }
    }

    /// The variable named `key`.
    pub fn get_var(&self, key: &str) -> Option<&EnvVar> {
        self.vars.iter().find(|v| v.key == key)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&SecretValue> {
        self.get_var(key).map(|v| &v.value)
    }

    /// The variables, in order.
    pub fn vars(&self) -> &[EnvVar] {
        &self.vars
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.vars.iter().map(|v| v.key.as_str())
    }

    /// Number of variables.
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// Whether there are no variables.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// Keeps only variables whose key `keep` accepts; returns the dropped keys.
    pub fn retain_keys(&mut self, mut keep: impl FnMut(&str) -> bool) -> Vec<String> {
        let mut dropped = Vec::new();
        self.vars.retain(|v| {
            let k = keep(&v.key);
            if !k {
                dropped.push(v.key.clone());
            }
            k
        });
        dropped
    }

    /// Checks every rule of `limits`; the first violation is returned.
    pub fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        if self.vars.len() > limits.max_vars {
            return Err(ValidationError::TooManyVars {
                count: self.vars.len(),
                max: limits.max_vars,
            });
        }
        let mut total = 0usize;
        for var in &self.vars {
            if var.key.len() > limits.max_key_bytes {
                return Err(ValidationError::KeyTooLong {
                    key: printable_key(&var.key),
                    len: var.key.len(),
                    max: limits.max_key_bytes,
                    origin: var.origin.clone(),
                });
            }
            if !is_valid_key(&var.key) {
                return Err(ValidationError::InvalidKey {
                    key: printable_key(&var.key),
                    origin: var.origin.clone(),
                });
            }
            if var.value.len() > limits.max_value_bytes {
                return Err(ValidationError::ValueTooLong {
                    key: var.key.clone(),
                    len: var.value.len(),
                    max: limits.max_value_bytes,
                    origin: var.origin.clone(),
                });
            }
            total += var.key.len() + var.value.len();
            if total > limits.max_total_bytes {
                // Report the true total, not the running one.
                let total = self.vars.iter().map(|v| v.key.len() + v.value.len()).sum();
                return Err(ValidationError::TooLarge {
                    total,
                    max: limits.max_total_bytes,
                    key: var.key.clone(),
                    origin: var.origin.clone(),
                });
            }
        }
        Ok(())
    }
}

/// (key, plaintext) of every variable, in order: what the tests compare.
#[cfg(test)]
pub(crate) fn pairs(env: &Env) -> Vec<(String, String)> {
    env.vars()
        .iter()
        .map(|v| (v.key.clone(), v.value.expose().to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(k: &str, v: &str) -> EnvVar {
        EnvVar::new(k, v, Origin::Argument)
    }

    #[test]
    fn keys() {
        for ok in ["A", "_", "a_1", "DSTACK_DOCKER_PASSWORD", "_9"] {
            assert!(is_valid_key(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A.B", "A B", "É", "A=B"] {
            assert!(!is_valid_key(bad), "{bad}");
        }
    }

    #[test]
    fn merge_overrides_in_place_and_keeps_order() {
        let mut env = Env::from_vars(vec![var("A", "1"), var("B", "2")]).unwrap();
        env.merge(Env::from_vars(vec![var("C", "3"), var("A", "9")]).unwrap());
        let got: Vec<_> = env
            .vars()
            .iter()
            .map(|v| (v.key.as_str(), v.value.expose()))
            .collect();
        assert_eq!(got, [("A", "9"), ("B", "2"), ("C", "3")]);
    }

    #[test]
    fn duplicate_in_one_input_names_both_lines() {
        let at = |line| Origin::Line {
            source: ".env".into(),
            line,
        };
        let err = Env::from_vars(vec![
            EnvVar::new("A", "secret-1", at(1)),
            EnvVar::new("A", "secret-2", at(4)),
        ])
        .unwrap_err();
        let msg = err.to_string();
        assert_eq!(
            msg,
            ".env:4: `A` is defined again (first at .env:1); keep one definition"
        );
    }

    #[test]
    fn limits_are_enforced_without_leaking_values() {
        let canary = "CANARY-".repeat(20_000);
        let env = Env::from_vars(vec![var("BIG", &canary)]).unwrap();
        let err = env.validate(&Limits::GUEST).unwrap_err();
        assert!(matches!(
            err,
            ValidationError::ValueTooLong { len: 140_000, .. }
        ));
        assert!(!err.to_string().contains("CANARY"));
        assert!(err.to_string().contains("`BIG`"));

        let many: Vec<_> = (0..1025).map(|i| var(&format!("K{i}"), "")).collect();
        let err = Env::from_vars(many)
            .unwrap()
            .validate(&Limits::GUEST)
            .unwrap_err();
        assert_eq!(
            err,
            ValidationError::TooManyVars {
                count: 1025,
                max: 1024
            }
        );

        let v = "x".repeat(100 * 1024);
        let big: Vec<_> = (0..11).map(|i| var(&format!("K{i}"), &v)).collect();
        let err = Env::from_vars(big)
            .unwrap()
            .validate(&Limits::GUEST)
            .unwrap_err();
        assert!(
            matches!(err, ValidationError::TooLarge { ref key, .. } if key == "K10"),
            "{err}"
        );

        let long_key = "K".repeat(256);
        let err = Env::from_vars(vec![var(&long_key, "")])
            .unwrap()
            .validate(&Limits::GUEST)
            .unwrap_err();
        assert!(matches!(err, ValidationError::KeyTooLong { len: 256, .. }));

        let err = Env::from_vars(vec![var("1BAD", "v")])
            .unwrap()
            .validate(&Limits::GUEST)
            .unwrap_err();
        assert!(matches!(err, ValidationError::InvalidKey { .. }));

        let exact = "y".repeat(128 * 1024);
        Env::from_vars(vec![var("OK", &exact)])
            .unwrap()
            .validate(&Limits::GUEST)
            .unwrap();
    }
}
