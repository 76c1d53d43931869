//! [`Redactor`]: removes every secret value of the decrypted env from text.

use envseal::Env;

/// Values shorter than this are not redacted from free text unless they are
/// registry credentials: a value like `1` or `true` would otherwise turn every
/// digit of the log into `[redacted]`. Credentials are redacted whatever their
/// length.
pub const MIN_REDACTED_LEN: usize = 3;

/// Variables whose values name public places, not secrets: the registry
/// hosts and the AWS region also appear in the (public, measured) compose
/// file, and redacting them would make every pull line and error unreadable.
pub const NOT_SECRET: &[&str] = &[
    "DSTACK_DOCKER_REGISTRY",
    "DSTACK_AWS_REGION",
    "DSTACK_AWS_ECR_REGISTRY",
];

/// Replaces each secret value with `[redacted:KEY]`, longest values first so
/// that a value containing another is removed whole.
#[derive(Default)]
pub struct Redactor {
    secrets: Vec<(zeroize::Zeroizing<String>, String)>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} values)", self.secrets.len())
    }
}

impl Redactor {
    /// A redactor for every value of `env` (see [`MIN_REDACTED_LEN`]).
    pub fn for_env(env: &Env) -> Self {
        let mut r = Redactor::default();
        for v in env.vars() {
            if NOT_SECRET.contains(&v.key.as_str()) {
                continue;
            }
            let credential = registry::credentials::CREDENTIAL_VARIABLES.contains(&v.key.as_str());
            if v.value.len() >= MIN_REDACTED_LEN || (credential && !v.value.is_empty()) {
                r.add(v.value.expose(), &v.key);
            }
        }
        r
    }

    /// Adds one secret.
    pub fn add(&mut self, value: &str, key: &str) {
        if value.is_empty() {
            return;
        }
        self.secrets
            .push((zeroize::Zeroizing::new(value.to_owned()), key.to_owned()));
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
    }

    /// `text` with every secret replaced.
    pub fn apply(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (secret, key) in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), &format!("[redacted:{key}]"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envseal::{EnvVar, Origin};

    #[test]
    fn redacts_longest_first_and_short_credentials() {
        let env = Env::from_vars(vec![
            EnvVar::new("DSTACK_DOCKER_PASSWORD", "pw", Origin::Sealed),
            EnvVar::new("TOKEN", "abcdef", Origin::Sealed),
            EnvVar::new("LONG", "xxabcdefxx", Origin::Sealed),
            EnvVar::new("FLAG", "1", Origin::Sealed),
        ])
        .unwrap();
        let r = Redactor::for_env(&env);
        assert_eq!(
            r.apply("login pw; xxabcdefxx abcdef 1"),
            "login [redacted:DSTACK_DOCKER_PASSWORD]; [redacted:LONG] [redacted:TOKEN] 1"
        );
    }
}
