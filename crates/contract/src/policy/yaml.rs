//! The YAML layer under the policy: merge keys resolved before the check
//! (so what is checked is what compose runs), YAML tags found (and
//! refused), and names from the file shown with control and invisible
//! characters escaped.

use super::{ComposeError, MAX_MERGE_PASSES};
use serde_yaml_ng::Value;

/// The most nodes (scalars, mappings, sequences) a compose document may
/// hold once its aliases are expanded. A real compose file has a few
/// thousand; an anchor of 4,000 keys aliased 1,500 times is six million,
/// gigabytes once parsed. The parser's own guard counts alias jumps, not
/// what they expand to.
pub const MAX_EXPANDED_NODES: usize = 100_000;

/// Refuses a document that expands (aliases replayed) to more than
/// [`MAX_EXPANDED_NODES`] nodes, before anything is built from it: the
/// count walks the parser's events and stops at the bound, so memory
/// stays that of the text and time that of the bound.
pub(super) fn check_expanded_size(yaml: &str) -> Result<(), ComposeError> {
    use serde::de::DeserializeSeed;
    let count = std::cell::Cell::new(0usize);
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        match Count(&count).deserialize(doc) {
            Ok(()) => {}
            Err(_) if count.get() > MAX_EXPANDED_NODES => {
                return Err(ComposeError::new(format!(
                    "the compose file expands to more than {MAX_EXPANDED_NODES} YAML nodes once its anchors and aliases are replaced: write it without aliases that repeat large parts"
                )));
            }
            // Not valid YAML: the real parse says where.
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// A visitor that builds nothing and counts every node it is shown,
/// failing once the count passes [`MAX_EXPANDED_NODES`].
#[derive(Clone, Copy)]
struct Count<'c>(&'c std::cell::Cell<usize>);

impl Count<'_> {
    fn one<E: serde::de::Error>(&self) -> Result<(), E> {
        let n = self.0.get() + 1;
        self.0.set(n);
        if n > MAX_EXPANDED_NODES {
            return Err(E::custom("too many nodes"));
        }
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Count<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Count<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML node")
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.one()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.one()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.one()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.one()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.one()
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.one()
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.one()
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        use serde::de::DeserializeSeed;
        self.deserialize(d)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.one()?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.one()?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        use serde::de::VariantAccess;
        self.one()?;
        let ((), variant) = data.variant_seed(self)?;
        variant.newtype_variant_seed(self)
    }
}

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

    /// The audit's finding 6: 52 KB of YAML (one anchor of 4,000 keys
    /// aliased by 1,500 services) took the API to 2.1 GB. It is refused
    /// from the count of its expanded nodes, before the document is built.
    #[test]
    fn an_alias_bomb_is_refused_by_its_expanded_size() {
        let keys: String = (0..4000).map(|i| format!("  k{i}: v\n")).collect();
        let services: String = (0..1500)
            .map(|i| format!("  s{i}:\n    image: alice/web:1\n    labels: *big\n"))
            .collect();
        let bomb = format!("x-big: &big\n{keys}services:\n{services}");
        assert!(bomb.len() < 120_000, "{}", bomb.len());
        let e = ComposeFile::parse(&bomb).unwrap_err();
        assert!(
            e.message.contains("100000 YAML nodes") && e.message.contains("aliases"),
            "{}",
            e.message
        );
        // The classic nested form too.
        let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let prev = format!("*a{}", i - 1);
            laughs.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        laughs.push_str("services:\n  web:\n    image: alice/web:1\n    labels: {x: 1}\n");
        assert!(ComposeFile::parse(&laughs).is_err());
        // Anchors of ordinary size pass.
        allowed(&format!(
            "x-env: &env\n  A: 1\nservices:\n{}",
            (0..20)
                .map(|i| format!("  s{i}:\n    image: alice/web:1\n    environment: *env\n"))
                .collect::<String>()
        ));
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
