//! The images of the compose file dstack will start, as compose will see
//! them: `${VAR}` interpolated from the environment compose runs with,
//! services that compose builds (`build:`) or does not start (`profiles:`)
//! left out, and the rest read by the one compose parser
//! ([`contract::ComposeFile::parse`], without the shared-engine policy: in
//! a dstack CVM the app owns the VM, so dstack's rules apply, not Berth's).

use crate::error::BootError;
use contract::policy::ServiceImage;
use registry::Category;
use serde_yaml_ng::Value;
use std::collections::BTreeMap;

/// The images `docker compose up` will look for, in file order, and the
/// names of the services it builds itself.
#[derive(Debug)]
pub struct ComposeImages {
    /// One per service that runs a pulled image.
    pub images: Vec<ServiceImage>,
    /// Services built in the CVM (`build:`): compose builds them, nothing to pull.
    pub built: Vec<String>,
    /// Services with `profiles:`, which a plain `up` does not start.
    pub inactive: Vec<String>,
    /// Variables the file uses that the environment does not set (compose
    /// substitutes an empty string and warns).
    pub unset: Vec<String>,
}

fn config_err(message: impl Into<String>) -> BootError {
    BootError::new(Category::Config, message)
}

/// Reads `yaml` as compose will, with `vars` as its environment.
pub fn images(yaml: &str, vars: &BTreeMap<String, String>) -> Result<ComposeImages, BootError> {
    let mut doc: Value = serde_yaml_ng::from_str(yaml)
        .map_err(|_| config_err("the compose file is not valid YAML"))?;
    let mut unset = Vec::new();
    interpolate_value(&mut doc, vars, &mut unset)?;
    let mut built = Vec::new();
    let mut inactive = Vec::new();
    if let Some(services) = doc.get_mut("services").and_then(Value::as_mapping_mut) {
        services.retain(|name, svc| {
            let name = name.as_str().unwrap_or("?").to_owned();
            let has_profiles = svc
                .get("profiles")
                .and_then(Value::as_sequence)
                .is_some_and(|p| !p.is_empty());
            if has_profiles {
                inactive.push(name);
                false
            } else if svc.get("build").is_some() {
                built.push(name);
                false
            } else {
                true
            }
        });
        if services.is_empty() {
            return Ok(ComposeImages {
                images: Vec::new(),
                built,
                inactive,
                unset,
            });
        }
    }
    let text = serde_yaml_ng::to_string(&doc)
        .map_err(|_| config_err("the compose file cannot be read back after interpolation"))?;
    let file = contract::ComposeFile::parse(&text).map_err(|e| {
        config_err(format!("the compose file: {e}"))
            .hint("`docker compose config` on your machine shows the same error, or the file compose will run")
    })?;
    unset.sort();
    unset.dedup();
    Ok(ComposeImages {
        images: file.images,
        built,
        inactive,
        unset,
    })
}

/// Interpolates every string value of `v` (not mapping keys), as compose does.
fn interpolate_value(
    v: &mut Value,
    vars: &BTreeMap<String, String>,
    unset: &mut Vec<String>,
) -> Result<(), BootError> {
    match v {
        Value::String(s) if s.contains('$') => {
            *s = interpolate(s, vars, unset)?;
        }
        Value::Sequence(items) => {
            for i in items {
                interpolate_value(i, vars, unset)?;
            }
        }
        Value::Mapping(m) => {
            for (_, item) in m.iter_mut() {
                interpolate_value(item, vars, unset)?;
            }
        }
        Value::Tagged(t) => interpolate_value(&mut t.value, vars, unset)?,
        _ => {}
    }
    Ok(())
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Compose's interpolation of one string: `$$` is a `$`; `$NAME` and
/// `${NAME}` the variable (empty, and noted in `unset`, when it is not set);
/// `${NAME:-default}` / `${NAME-default}` a default when unset or empty /
/// unset; `${NAME:?message}` / `${NAME?message}` an error; `${NAME:+alt}` /
/// `${NAME+alt}` `alt` when set and non-empty / set. Defaults and
/// alternatives are interpolated in turn.
pub fn interpolate(
    s: &str,
    vars: &BTreeMap<String, String>,
    unset: &mut Vec<String>,
) -> Result<String, BootError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                out.push('$');
                i += 2;
            }
            Some('{') => {
                // The matching brace, counting nested `${`.
                let mut depth = 1;
                let mut j = i + 2;
                while j < chars.len() {
                    match chars[j] {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                if j >= chars.len() {
                    return Err(config_err(
                        "the compose file has a `${` without its closing `}`",
                    ));
                }
                let inner: String = chars[i + 2..j].iter().collect();
                out.push_str(&braced(&inner, vars, unset)?);
                i = j + 1;
            }
            Some(&n) if is_name_start(n) => {
                let mut j = i + 1;
                while j < chars.len() && is_name_char(chars[j]) {
                    j += 1;
                }
                let name: String = chars[i + 1..j].iter().collect();
                out.push_str(&lookup(&name, vars, unset));
                i = j;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    Ok(out)
}

fn lookup(name: &str, vars: &BTreeMap<String, String>, unset: &mut Vec<String>) -> String {
    match vars.get(name) {
        Some(v) => v.clone(),
        None => {
            unset.push(name.to_owned());
            String::new()
        }
    }
}

/// The inside of `${…}`.
fn braced(
    inner: &str,
    vars: &BTreeMap<String, String>,
    unset: &mut Vec<String>,
) -> Result<String, BootError> {
    let name_len = inner
        .char_indices()
        .find(|&(k, c)| {
            !(if k == 0 {
                is_name_start(c)
            } else {
                is_name_char(c)
            })
        })
        .map_or(inner.len(), |(k, _)| k);
    let (name, rest) = inner.split_at(name_len);
    if name.is_empty() {
        return Err(config_err(format!(
            "the compose file has an invalid interpolation `${{{}}}`",
            crate::serial::escape_controls(inner)
        )));
    }
    let value = vars.get(name);
    let set = value.is_some();
    let non_empty = value.is_some_and(|v| !v.is_empty());
    let (op, arg) = if let Some(a) = rest.strip_prefix(":-") {
        (":-", a)
    } else if let Some(a) = rest.strip_prefix(":?") {
        (":?", a)
    } else if let Some(a) = rest.strip_prefix(":+") {
        (":+", a)
    } else if let Some(a) = rest.strip_prefix('-') {
        ("-", a)
    } else if let Some(a) = rest.strip_prefix('?') {
        ("?", a)
    } else if let Some(a) = rest.strip_prefix('+') {
        ("+", a)
    } else if rest.is_empty() {
        ("", "")
    } else {
        return Err(config_err(format!(
            "the compose file has an invalid interpolation of `{name}`"
        )));
    };
    let sub = |unset: &mut Vec<String>| interpolate(arg, vars, unset);
    Ok(match op {
        "" => lookup(name, vars, unset),
        ":-" if !non_empty => sub(unset)?,
        "-" if !set => sub(unset)?,
        ":?" if !non_empty => {
            return Err(required(name, arg));
        }
        "?" if !set => {
            return Err(required(name, arg));
        }
        ":+" => {
            if non_empty {
                sub(unset)?
            } else {
                String::new()
            }
        }
        "+" => {
            if set {
                sub(unset)?
            } else {
                String::new()
            }
        }
        _ => value.cloned().unwrap_or_default(),
    })
}

fn required(name: &str, message: &str) -> BootError {
    // The message is the file's own text (public, measured).
    config_err(format!(
        "the compose file requires `{name}`, which the env does not set{}",
        if message.is_empty() {
            String::new()
        } else {
            format!(": {}", crate::serial::escape_controls(message))
        }
    ))
    .hint("add the variable to the app's env (and to allowed_envs)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn i(s: &str, v: &BTreeMap<String, String>) -> String {
        interpolate(s, v, &mut Vec::new()).unwrap()
    }

    #[test]
    fn interpolates_as_compose_does() {
        let v = vars(&[("REG", "ghcr.io/acme"), ("TAG", "v2"), ("EMPTY", "")]);
        assert_eq!(i("${REG}/web:${TAG}", &v), "ghcr.io/acme/web:v2");
        assert_eq!(i("$REG/web:$TAG", &v), "ghcr.io/acme/web:v2");
        assert_eq!(i("a$$b", &v), "a$b");
        assert_eq!(i("${EMPTY:-x}", &v), "x");
        assert_eq!(i("${EMPTY-x}", &v), "");
        assert_eq!(i("${NOPE-x}", &v), "x");
        assert_eq!(i("${NOPE:-${REG}}", &v), "ghcr.io/acme");
        assert_eq!(i("${TAG:+yes}", &v), "yes");
        assert_eq!(i("${EMPTY:+yes}", &v), "");
        assert_eq!(i("${EMPTY+yes}", &v), "yes");
        let mut unset = Vec::new();
        assert_eq!(interpolate("x${NOPE}y", &v, &mut unset).unwrap(), "xy");
        assert_eq!(unset, vec!["NOPE".to_owned()]);
        let e = interpolate("${NOPE:?set it}", &v, &mut Vec::new()).unwrap_err();
        assert!(e.message.contains("requires `NOPE`"), "{}", e.message);
        assert!(interpolate("${A", &v, &mut Vec::new()).is_err());
    }

    #[test]
    fn leaves_out_built_and_inactive_services() {
        let yaml = "services:\n  web:\n    image: ${REG:-docker.io/alice}/web:${TAG}\n  built:\n    build: .\n    image: acme/built:1\n  debug:\n    image: acme/debug:1\n    profiles: [debug]\n  tool:\n    image: \"$${NOT_A_VAR}/x\"\n    privileged: true\n    volumes: [\"/:/host\"]\n";
        let out = images(yaml, &vars(&[("TAG", "3")]));
        // `$${…}` is a literal `$`, which no image name may hold.
        assert!(out.is_err());
        let yaml = yaml.replace("\"$${NOT_A_VAR}/x\"", "busybox");
        let out = images(&yaml, &vars(&[("TAG", "3")])).unwrap();
        let written: Vec<&str> = out.images.iter().map(|i| i.written.as_str()).collect();
        assert_eq!(written, ["docker.io/alice/web:3", "busybox"]);
        assert_eq!(out.built, ["built"]);
        assert_eq!(out.inactive, ["debug"]);
    }

    #[test]
    fn a_file_of_built_services_only_needs_no_pull() {
        let out = images(
            "services:\n  a:\n    build:\n      context: .\n",
            &vars(&[]),
        )
        .unwrap();
        assert!(out.images.is_empty());
        assert_eq!(out.built, ["a"]);
    }
}
