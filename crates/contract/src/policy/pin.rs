//! Pinning a compose file's images: each service's `image:` rewritten to a
//! reference with a digest, the rest of the file kept as the user wrote it.
//!
//! The rewrite is textual: a line `image: <scalar>` (plain, single- or
//! double-quoted, optionally followed by a comment) whose scalar is an image
//! being pinned gets the pinned reference in its place, in the same quoting.
//! It is then checked by parsing the result: every service must name
//! exactly its pinned image, and nothing else in the file may have changed
//! meaning. Where that check fails (flow mappings, block scalars, an image
//! written over several lines), the file is re-rendered from its parsed form
//! instead — comments and layout are then lost, and the caller is told.

use super::{ComposeError, ComposeFile};
use crate::isolation::Isolation;
use serde_yaml_ng::Value;
use std::collections::BTreeMap;

/// A compose file with its images pinned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedCompose {
    /// The new file.
    pub yaml: String,
    /// Whether the file had to be re-rendered (comments and layout lost).
    pub rerendered: bool,
}

/// `yaml` with each image written as a key of `pins` replaced by its value
/// (the image as written → the pinned reference). Images not in `pins` are
/// left alone, and so is the `image:` of a service that builds (it names
/// what the build makes, which no registry has): the file is read as the
/// container isolation mode reads it, where a service may build.
pub fn pin_images(
    yaml: &str,
    pins: &BTreeMap<String, String>,
) -> Result<PinnedCompose, ComposeError> {
    let before = ComposeFile::parse_for(yaml, Isolation::Container)?;
    let built: Vec<&str> = before
        .builds
        .iter()
        .filter_map(|b| {
            before
                .doc
                .get("services")?
                .get(&b.service)?
                .get("image")?
                .as_str()
        })
        .filter(|built| !before.images.iter().any(|i| i.written == *built))
        .collect();
    let pins: BTreeMap<String, String> = pins
        .iter()
        .filter(|(written, _)| !built.contains(&written.as_str()))
        .map(|(w, p)| (w.clone(), p.clone()))
        .collect();
    let pins = &pins;
    let want: Vec<(String, String)> = before
        .images
        .iter()
        .map(|i| {
            let pinned = pins.get(&i.written).unwrap_or(&i.written).clone();
            (i.service.clone(), pinned)
        })
        .collect();
    let textual = rewrite_lines(yaml, pins);
    if same_but_images(&before, &textual, &want, pins) {
        return Ok(PinnedCompose {
            yaml: textual,
            rerendered: false,
        });
    }
    let rendered = rerender(yaml, &want)?;
    if same_but_images(&before, &rendered, &want, pins) {
        return Ok(PinnedCompose {
            yaml: rendered,
            rerendered: true,
        });
    }
    Err(ComposeError::new(
        "the compose file's images cannot be pinned (its `image:` keys could not be rewritten); deploy it unpinned or write each image with its digest",
    ))
}

/// Whether `after` parses to `before` with each service's image replaced by
/// the one in `want`, and nothing else changed but `image` keys elsewhere
/// (an anchor's) pinned the same way.
fn same_but_images(
    before: &ComposeFile,
    after: &str,
    want: &[(String, String)],
    pins: &BTreeMap<String, String>,
) -> bool {
    let Ok(after) = ComposeFile::parse_for(after, Isolation::Container) else {
        return false;
    };
    let got: Vec<(String, String)> = after
        .images
        .iter()
        .map(|i| (i.service.clone(), i.written.clone()))
        .collect();
    if got != want {
        return false;
    }
    let mut expected = before.doc.clone();
    pin_image_keys(&mut expected, pins);
    set_images(&mut expected, want);
    expected == after.doc
}

fn set_images(doc: &mut Value, want: &[(String, String)]) {
    let Some(services) = doc.get_mut("services").and_then(Value::as_mapping_mut) else {
        return;
    };
    for (service, image) in want {
        if let Some(svc) = services
            .get_mut(service.as_str())
            .and_then(Value::as_mapping_mut)
        {
            svc.insert(Value::from("image"), Value::from(image.as_str()));
        }
    }
}

/// Every `image: X` of a mapping, at any depth, with X a key of `pins`,
/// set to the pinned reference.
fn pin_image_keys(v: &mut Value, pins: &BTreeMap<String, String>) {
    match v {
        Value::Mapping(m) => {
            for (k, val) in m.iter_mut() {
                if k.as_str() == Some("image")
                    && let Some(p) = val.as_str().and_then(|s| pins.get(s))
                {
                    *val = Value::from(p.as_str());
                } else {
                    pin_image_keys(val, pins);
                }
            }
        }
        Value::Sequence(s) => s.iter_mut().for_each(|x| pin_image_keys(x, pins)),
        Value::Tagged(t) => pin_image_keys(&mut t.value, pins),
        _ => {}
    }
}

/// Replaces the scalar of every one-line `image: X` whose X is a key of
/// `pins`, keeping its quoting, indentation and trailing comment.
fn rewrite_lines(yaml: &str, pins: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(yaml.len() + 80 * pins.len());
    for line in yaml.split_inclusive('\n') {
        out.push_str(&rewrite_line(line, pins).unwrap_or_else(|| line.to_owned()));
    }
    out
}

fn rewrite_line(line: &str, pins: &BTreeMap<String, String>) -> Option<String> {
    let body = line.trim_end_matches(['\n', '\r']);
    let eol = &line[body.len()..];
    let indent = body.len() - body.trim_start().len();
    let rest = body[indent..].strip_prefix("image:")?;
    let value_start = rest.len() - rest.trim_start().len();
    if value_start == 0 && !rest.is_empty() {
        return None;
    }
    let value = &rest[value_start..];
    let (scalar, quote, tail) = match value.chars().next()? {
        q @ ('"' | '\'') => {
            let end = value[1..].find(q)? + 1;
            (&value[1..end], Some(q), &value[end + 1..])
        }
        _ => match value.find(" #") {
            Some(i) => (value[..i].trim_end(), None, &value[i..]),
            None => (value.trim_end(), None, ""),
        },
    };
    let tail_ok = tail.trim().is_empty() || tail.trim_start().starts_with('#');
    if !tail_ok || scalar.contains('\\') {
        return None;
    }
    let pinned = pins.get(scalar)?;
    let (open, close) = match quote {
        Some(q) => (q.to_string(), q.to_string()),
        None => (String::new(), String::new()),
    };
    let pad = if quote.is_none() && !tail.is_empty() && !tail.starts_with(' ') {
        " "
    } else {
        ""
    };
    Some(format!(
        "{}image:{}{open}{pinned}{close}{pad}{tail}{eol}",
        &body[..indent],
        &rest[..value_start],
    ))
}

/// The file re-rendered from its parse (merge keys left as written), each
/// service's image set to the one in `want`.
fn rerender(yaml: &str, want: &[(String, String)]) -> Result<String, ComposeError> {
    let mut doc: Value = serde_yaml_ng::from_str(yaml)
        .map_err(|_| ComposeError::new("the compose file is not valid YAML"))?;
    set_images(&mut doc, want);
    serde_yaml_ng::to_string(&doc)
        .map_err(|_| ComposeError::new("the pinned compose file cannot be rendered"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn pins() -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "ghcr.io/acme/web:v1".to_owned(),
                format!("ghcr.io/acme/web:v1@{D1}"),
            ),
            ("acme/db:2".to_owned(), format!("acme/db:2@{D2}")),
        ])
    }

    #[test]
    fn rewrites_only_the_image_scalars_keeping_comments_and_quotes() {
        let yaml = "# my app\nservices:\n  web:\n    image: \"ghcr.io/acme/web:v1\"   # the front\n    command: [\"echo\", \"image: ghcr.io/acme/web:v1\"]\n  db:\n    image: 'acme/db:2'\n    environment:\n      - A=1 # keep\n  cache:\n    image: redis:7\n";
        let p = pin_images(yaml, &pins()).unwrap();
        assert!(!p.rerendered);
        assert_eq!(
            p.yaml,
            format!(
                "# my app\nservices:\n  web:\n    image: \"ghcr.io/acme/web:v1@{D1}\"   # the front\n    command: [\"echo\", \"image: ghcr.io/acme/web:v1\"]\n  db:\n    image: 'acme/db:2@{D2}'\n    environment:\n      - A=1 # keep\n  cache:\n    image: redis:7\n"
            )
        );
    }

    #[test]
    fn plain_scalar_with_a_comment() {
        let yaml = "services:\n  db:\n    image: acme/db:2 # pinned soon\r\n";
        let p = pin_images(yaml, &pins()).unwrap();
        assert_eq!(
            p.yaml,
            format!("services:\n  db:\n    image: acme/db:2@{D2} # pinned soon\r\n")
        );
    }

    #[test]
    fn an_anchor_shared_by_services_is_pinned_once() {
        let yaml = "x-base: &base\n  image: acme/db:2\n  restart: always\nservices:\n  a:\n    <<: *base\n  b:\n    <<: *base\n    command: [\"x\"]\n";
        let p = pin_images(yaml, &pins()).unwrap();
        assert!(!p.rerendered);
        assert_eq!(
            p.yaml,
            yaml.replace("acme/db:2", &format!("acme/db:2@{D2}"))
        );
        let f = ComposeFile::parse(&p.yaml).unwrap();
        assert!(f.images.iter().all(|i| i.reference.digest().is_some()));
    }

    #[test]
    fn an_anchor_overridden_by_one_service_keeps_each_its_own() {
        let yaml = "x-base: &base\n  image: acme/db:2\nservices:\n  a:\n    <<: *base\n  web:\n    <<: *base\n    image: ghcr.io/acme/web:v1\n";
        let p = pin_images(yaml, &pins()).unwrap();
        assert!(!p.rerendered);
        let f = ComposeFile::parse(&p.yaml).unwrap();
        let got: Vec<_> = f.images.iter().map(|i| i.written.as_str()).collect();
        assert_eq!(
            got,
            [
                format!("acme/db:2@{D2}"),
                format!("ghcr.io/acme/web:v1@{D1}")
            ]
        );
    }

    #[test]
    fn a_service_that_builds_keeps_its_image() {
        // `app` builds the image it names, which no registry has.
        let yaml = "services:\n  app:\n    image: ghcr.io/acme/web:v1\n    build:\n      dockerfile_inline: |\n        FROM alpine:3\n  db:\n    image: acme/db:2\n  only-build:\n    build: .\n";
        let p = pin_images(yaml, &pins()).unwrap();
        assert!(!p.rerendered);
        let f = ComposeFile::parse_for(&p.yaml, Isolation::Container).unwrap();
        assert_eq!(f.images[0].written, format!("acme/db:2@{D2}"));
        let doc: Value = serde_yaml_ng::from_str(&p.yaml).unwrap();
        assert_eq!(
            doc["services"]["app"]["image"].as_str(),
            Some("ghcr.io/acme/web:v1")
        );
    }

    #[test]
    fn flow_style_falls_back_to_rendering() {
        let yaml = "services: {db: {image: acme/db:2, command: [\"x\"]}}\n";
        let p = pin_images(yaml, &pins()).unwrap();
        assert!(p.rerendered);
        let f = ComposeFile::parse(&p.yaml).unwrap();
        assert_eq!(f.images[0].written, format!("acme/db:2@{D2}"));
    }

    #[test]
    fn an_image_line_outside_services_with_another_meaning_is_not_trusted() {
        // A block scalar whose text looks like an image line: the textual
        // rewrite would change it, so the check refuses it and the file is
        // re-rendered (the block's text kept).
        let yaml = "x-doc: |\n  image: acme/db:2\nservices:\n  db:\n    image: acme/db:2\n";
        let p = pin_images(yaml, &pins()).unwrap();
        assert!(p.rerendered);
        let doc: Value = serde_yaml_ng::from_str(&p.yaml).unwrap();
        assert_eq!(doc["x-doc"].as_str(), Some("image: acme/db:2\n"));
        assert_eq!(
            doc["services"]["db"]["image"].as_str(),
            Some(format!("acme/db:2@{D2}").as_str())
        );
    }

    #[test]
    fn nothing_to_pin_is_the_same_file() {
        let yaml = "services:\n  c:\n    image: redis:7 # as is\n";
        let p = pin_images(yaml, &BTreeMap::new()).unwrap();
        assert_eq!(p.yaml, yaml);
        assert!(!p.rerendered);
    }
}
