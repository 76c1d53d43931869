//! Rules on env variable names that the control plane checks at
//! provisioning and the boot agent checks again: the name grammar, and the
//! names a tenant may not set because they would steer host-side programs
//! (the compose tool, the dynamic loader, Python, proxies).

/// The shortest sealed env: ephemeral key (32) + nonce (12) + tag (16).
pub const MIN_SEALED_LEN: usize = 32 + 12 + 16;

/// Longest variable name, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// The limits a CVM enforces on its env (the same as dstack's guest agent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most variables allowed.
    pub max_vars: usize,
    /// Most bytes of keys plus values, all variables together.
    pub max_total_bytes: usize,
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Longest value, in bytes.
    pub max_value_bytes: usize,
}

impl Limits {
    /// The guest's limits: 1024 variables, 1 MiB in total, 255-byte keys,
    /// 128 KiB values.
    pub const GUEST: Limits = Limits {
        max_vars: 1024,
        max_total_bytes: 1024 * 1024,
        max_key_bytes: MAX_KEY_LEN,
        max_value_bytes: 128 * 1024,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::GUEST
    }
}

/// [`is_valid_key`]'s grammar as a regular expression, for front ends that
/// check before sending (the web console; the length is [`MAX_KEY_LEN`]).
/// Change both together: the console's browser test compares them.
pub const KEY_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*$";

/// `^[A-Za-z_][A-Za-z0-9_]*$`, at most [`MAX_KEY_LEN`] bytes.
pub fn is_valid_key(key: &str) -> bool {
    let mut b = key.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && key.len() <= MAX_KEY_LEN
}

/// Exact names reserved for the platform.
const RESERVED_NAMES: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "ENV",
    "BASH_ENV",
    "IFS",
    "TMPDIR",
    "GCONV_PATH",
    "NLSPATH",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "RES_OPTIONS",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NO_PROXY",
];

/// Name prefixes reserved for the platform, and why.
const RESERVED_PREFIXES: &[(&str, &str)] = &[
    ("LD_", "it steers the dynamic loader of host-side programs"),
    (
        "DOCKER_",
        "it steers the Docker client and engine connection",
    ),
    ("COMPOSE_", "it steers the compose tool"),
    (
        "PYTHON",
        "it steers the Python interpreter of the compose tool",
    ),
    ("BERTH_", "it is Berth's own configuration"),
    ("MALLOC_", "it steers the C library's allocator"),
];

/// Why a tenant may not set `key`, or `None` when it may. Case-insensitive
/// where programs read the name case-insensitively (`http_proxy`).
pub fn reserved_reason(key: &str) -> Option<&'static str> {
    let upper = key.to_ascii_uppercase();
    if upper.ends_with("_PROXY") {
        return Some("it redirects the host's outbound connections");
    }
    if RESERVED_NAMES.contains(&upper.as_str()) {
        return Some("it is set by the platform for host-side programs");
    }
    RESERVED_PREFIXES
        .iter()
        .find(|(p, _)| upper.starts_with(p))
        .map(|(_, why)| *why)
}

/// Checks one name a tenant wants to pass into the CVM: the grammar, then
/// the reserved families. The error names the key, never a value.
pub fn check_tenant_key(key: &str) -> Result<(), EnvKeyError> {
    if !is_valid_key(key) {
        return Err(EnvKeyError::Invalid(shown(key)));
    }
    if let Some(why) = reserved_reason(key) {
        return Err(EnvKeyError::Reserved {
            key: key.to_owned(),
            why,
        });
    }
    Ok(())
}

fn shown(key: &str) -> String {
    key.chars()
        .take(80)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Why an env variable name is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvKeyError {
    /// Not `[A-Za-z_][A-Za-z0-9_]*` of at most 255 bytes.
    #[error(
        "env variable name `{0}` is not valid: use letters, digits and `_`, not starting with a digit, at most 255 bytes"
    )]
    Invalid(String),
    /// A reserved family.
    #[error("env variable `{key}` is reserved for the platform: {why}; rename it")]
    Reserved {
        /// The name.
        key: String,
        /// Why.
        why: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in [
            "A",
            "_x",
            "DSTACK_DOCKER_PASSWORD",
            "GREETING",
            "PROXY_HOST",
        ] {
            check_tenant_key(ok).unwrap();
        }
        for bad in ["1A", "A-B", "", "A B", "X\nBOOT_OK"] {
            assert!(
                matches!(check_tenant_key(bad), Err(EnvKeyError::Invalid(_))),
                "{bad}"
            );
        }
        for reserved in [
            "LD_PRELOAD",
            "DOCKER_CONTEXT",
            "DOCKER_HOST",
            "COMPOSE_FILE",
            "http_proxy",
            "HTTPS_PROXY",
            "PATH",
            "PYTHONPATH",
            "BERTH_API_KEY",
        ] {
            assert!(
                matches!(
                    check_tenant_key(reserved),
                    Err(EnvKeyError::Reserved { .. })
                ),
                "{reserved}"
            );
        }
        assert!(
            !check_tenant_key("X\nBOOT OK")
                .unwrap_err()
                .to_string()
                .contains('\n')
        );
    }
}
