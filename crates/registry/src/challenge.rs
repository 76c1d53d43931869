//! `WWW-Authenticate` challenges: `Basic realm="x"` (htpasswd registries,
//! ECR) or `Bearer realm="…",service="…",scope="…"` (Docker Hub, GHCR), as
//! the distribution spec's token authentication describes them.
//!
//! Parsing only: what is done with a challenge is [`crate::auth`]'s
//! business. The parser is fuzzed (`fuzz/checks/www_authenticate.rs`).

use std::collections::HashMap;

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// Username and password on every request.
    Basic,
    /// A token from `realm`, for `service`.
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Parses `WWW-Authenticate`: `Basic realm="x"` or `Bearer realm="…",service="…",scope="…"`.
pub(crate) fn parse_challenge(value: &str) -> Option<(Challenge, HashMap<String, String>)> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let params = parse_auth_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some((Challenge::Basic, params)),
        "bearer" => {
            let realm = params.get("realm")?.clone();
            let service = params.get("service").cloned();
            Some((Challenge::Bearer { realm, service }, params))
        }
        _ => None,
    }
}

/// `parse_challenge` for the fuzz targets and property tests (`fuzz/`):
/// `None` if the value is refused, else the Bearer realm (`None` for Basic)
/// and every parameter. Not part of the crate's API.
#[doc(hidden)]
pub fn parse_challenge_for_fuzzing(
    value: &str,
) -> Option<(Option<String>, HashMap<String, String>)> {
    parse_challenge(value).map(|(challenge, params)| match challenge {
        Challenge::Basic => (None, params),
        Challenge::Bearer { realm, .. } => (Some(realm), params),
    })
}

fn parse_auth_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq]
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        rest = &rest[eq + 1..];
        let value;
        if let Some(r) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = r.char_indices();
            let mut end = r.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    _ => v.push(c),
                }
            }
            value = v;
            rest = &r[end.min(r.len())..];
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        out.insert(key, value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (c, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            }
        );
        assert_eq!(p["scope"], "repository:library/busybox:pull");
        let (c, _) = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c, Challenge::Basic);
        let (_, p) = parse_challenge(
            r#"Bearer realm="https://x/t",service="s",scope="repository:a:pull",error="insufficient_scope""#,
        )
        .unwrap();
        assert_eq!(p["error"], "insufficient_scope");
        assert!(parse_challenge("Negotiate abc").is_none());
        assert!(parse_challenge("Bearer service=\"x\"").is_none());
    }
}
