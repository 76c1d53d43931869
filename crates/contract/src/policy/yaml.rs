//! The YAML layer under the policy: merge keys resolved before the check
//! (so what is checked is what compose runs), YAML tags found (and
//! refused), and names from the file shown with control and invisible
//! characters escaped.

use super::{ComposeError, MAX_MERGE_PASSES};
use serde_yaml_ng::Value;

/// Resolves merge keys until none is left (one pass of
/// [`Value::apply_merge`] leaves the merge keys of merged-in anchors).
pub(super) fn resolve_merges(doc: &mut Value) -> Result<(), ComposeError> {
    for _ in 0..MAX_MERGE_PASSES {
        if !has_merge_key(doc) {
            return Ok(());
        }
        doc.apply_merge().map_err(|_| {
            ComposeError::new(
                "the compose file has a YAML merge key `<<` that names neither a mapping nor a list of mappings: merge only mappings",
            )
        })?;
    }
    if has_merge_key(doc) {
        return Err(ComposeError::new(
            "the compose file nests YAML merge keys `<<` too deeply: flatten the anchors",
        ));
    }
    Ok(())
}

fn has_merge_key(v: &Value) -> bool {
    match v {
        Value::Mapping(m) => m
            .iter()
            .any(|(k, v)| k.as_str() == Some("<<") || has_merge_key(v)),
        Value::Sequence(s) => s.iter().any(has_merge_key),
        Value::Tagged(t) => has_merge_key(&t.value),
        _ => false,
    }
}

/// The path of the first tagged value (or key), if any.
pub(super) fn find_tag(v: &Value, path: &mut Vec<String>) -> Option<Vec<String>> {
    match v {
        Value::Tagged(_) => Some(path.clone()),
        Value::Mapping(m) => m.iter().find_map(|(k, v)| {
            if let Value::Tagged(_) = k {
                return Some(path.clone());
            }
            path.push(scalar_text(k));
            let found = find_tag(v, path);
            path.pop();
            found
        }),
        Value::Sequence(s) => s.iter().enumerate().find_map(|(i, v)| {
            path.push(i.to_string());
            let found = find_tag(v, path);
            path.pop();
            found
        }),
        _ => None,
    }
}

/// A scalar key or value as text (for names that are not strings).
pub(super) fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => "null".to_owned(),
        _ => "(not a scalar)".to_owned(),
    }
}

/// A name from the file, as shown in a message: control and invisible
/// characters escaped, at most 80 characters.
pub(super) fn shown(s: &str) -> String {
    const MAX: usize = 80;
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        push_escaped(&mut out, c);
    }
    out
}

/// `s` with control and invisible characters escaped.
pub(super) fn escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    let invisible = matches!(
        c,
        '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}'
    );
    if c.is_control() || invisible {
        out.extend(c.escape_default());
    } else {
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::ComposeFile;
    use serde_yaml_ng::Value;

    #[test]
    fn merge_keys_are_resolved_before_the_check() {
        let smuggled = "x-base: &base\n  privileged: true\nservices:\n  web:\n    <<: *base\n    image: alice/web:1\n";
        refused_at(smuggled, "privileged");
        // A merge inside a merged anchor (one pass of `apply_merge` leaves it).
        let nested = "x-a: &a\n  network_mode: host\nx-b: &b\n  <<: *a\n  restart: always\nservices:\n  web:\n    <<: *b\n    image: alice/web:1\n";
        refused_at(nested, "network_mode");
        let listed =
            "x-a: &a {cap_add: [ALL]}\nservices:\n  web:\n    <<: [*a]\n    image: alice/web:1\n";
        refused_at(listed, "cap_add");
        // What is rendered is the merged document.
        let ok = "x-base: &base\n  restart: always\n  environment: [A=1]\nservices:\n  web:\n    <<: *base\n    image: alice/web:1\n";
        let c = ComposeFile::parse_and_check(ok).unwrap();
        let out = c.render(&[]);
        assert!(!out.contains("<<"), "{out}");
        let again: Value = serde_yaml_ng::from_str(&out).unwrap();
        assert_eq!(again["services"]["web"]["restart"], Value::from("always"));
        assert!(ComposeFile::parse("x: &a 1\nservices:\n  web:\n    <<: *a\n").is_err());
    }

    #[test]
    fn names_from_the_file_are_escaped() {
        let e = refused("services:\n  \"a\\nb\":\n    image: nginx\n    privileged: true\n");
        assert_eq!(e.service.as_deref(), Some("a\\nb"));
        assert!(e.message.contains("`a\\nb`"), "{}", e.message);
        let e = refused("services:\n  \"a\\u202eb\":\n    image: nginx\n");
        assert!(e.message.contains("a\\u{202e}b"), "{}", e.message);
        let e = refused(&web("volumes: [\"/x\\ny:/z\"]"));
        assert!(e.message.contains("/x\\ny"), "{}", e.message);
        let e = refused("services:\n  \"a\\nb\":\n    image: \"Bad\\nRef\"\n");
        assert!(e.message.contains("a\\nb"), "{}", e.message);
        let e = refused(&format!(
            "{}networks:\n  \"n\\r\\n\":\n    external: true\n",
            web("")
        ));
        assert!(e.message.contains("n\\r\\n"), "{}", e.message);
        let e = refused(&web(&format!("extends: {}", "x".repeat(500))));
        assert!(e.message.len() < 400, "{}", e.message);
    }

    #[test]
    fn yaml_tags_and_service_names() {
        refused(&web("volumes: !override [\"/:/host\"]"));
        refused(&web("privileged: !reset null"));
        refused("services:\n  web:\n    image: alice/web:1\n  bad name:\n    image: nginx\n");
        // Standard tags are resolved by the parser, not kept.
        allowed(&web("restart: !!str always"));
    }
}
