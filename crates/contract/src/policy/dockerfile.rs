//! Inline Dockerfiles (`build.dockerfile_inline`) in the container
//! isolation mode: which base images they name (so the boot agent pulls
//! them with the CVM's registry credentials before the build), compose's
//! `$$` escape undone, and the text rewritten for a build that names the
//! base images as the engine knows them.
//!
//! The scan reads Dockerfile instructions the way the builder does:
//! comments and empty lines skipped, `\` continuation lines joined, and
//! the bodies of heredocs (`<<EOF` … `EOF`) skipped, so a line of a
//! script that starts with `FROM` is not taken for an instruction.

use super::yaml::shown;
use super::{BaseImage, ComposeError, Site};
use crate::reference::ImageReference;
use std::collections::BTreeMap;

/// One instruction: its first physical line (index into the text's lines)
/// and its keyword and arguments (continuations joined).
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

/// The instructions of `text`, in order.
fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut heredocs: Vec<(String, bool)> = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        if let Some((word, strip_tabs)) = heredocs.first() {
            let body = if *strip_tabs {
                line.trim_start_matches('\t')
            } else {
                line
            };
            if body == word {
                heredocs.remove(0);
            }
            continue;
        }
        let trimmed = line.trim_start();
        if current.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        let (start, mut joined) = current.take().unwrap_or((i, String::new()));
        let end = trimmed.trim_end();
        if let Some(head) = end.strip_suffix('\\') {
            joined.push_str(head);
            joined.push(' ');
            current = Some((start, joined));
            continue;
        }
        joined.push_str(end);
        let (keyword, args) = joined
            .trim()
            .split_once(char::is_whitespace)
            .map_or((joined.trim(), ""), |(k, a)| (k, a.trim()));
        let keyword = keyword.to_ascii_uppercase();
        if matches!(keyword.as_str(), "RUN" | "COPY" | "ADD") {
            heredocs.extend(heredoc_words(args));
        }
        out.push(Instruction {
            line: start,
            keyword,
            args: args.to_owned(),
        });
    }
    out
}

/// The terminators of the heredocs an instruction opens (`<<EOF`,
/// `<<-EOF`, `<<'EOF'`, `<<"EOF"`), and whether their tabs are stripped.
fn heredoc_words(args: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut rest = args;
    while let Some(at) = rest.find("<<") {
        let mut after = &rest[at + 2..];
        let strip_tabs = after.starts_with('-');
        if strip_tabs {
            after = &after[1..];
        }
        let quote = after.chars().next().filter(|c| *c == '\'' || *c == '"');
        if let Some(q) = quote {
            after = &after[1..];
            let word: String = after.chars().take_while(|c| *c != q).collect();
            if !word.is_empty() {
                out.push((word, strip_tabs));
            }
        } else {
            let word: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !word.is_empty() && !word.starts_with(|c: char| c.is_ascii_digit()) {
                out.push((word, strip_tabs));
            }
        }
        rest = after;
    }
    out
}

/// The image a `FROM` names, and the stage name it declares (`AS name`).
fn from_parts(args: &str) -> (Option<&str>, Option<&str>) {
    let mut words = args.split_whitespace().skip_while(|w| w.starts_with("--"));
    let image = words.next();
    let stage = match words.next() {
        Some(w) if w.eq_ignore_ascii_case("as") => words.next(),
        _ => None,
    };
    (image, stage)
}

/// The `--from=` of a `COPY`, if any.
fn copy_from(args: &str) -> Option<&str> {
    args.split_whitespace()
        .take_while(|w| w.starts_with("--"))
        .find_map(|w| w.strip_prefix("--from="))
}

/// What a name in `FROM`/`COPY --from` is, for the scan.
enum Named<'a> {
    /// `scratch`, an earlier stage, a number, an additional context, or
    /// built from `ARG`s: nothing to pull.
    Nothing,
    /// An image to pull.
    Image(&'a str),
}

fn classify<'a>(name: &'a str, stages: &[String], contexts: &[String]) -> Named<'a> {
    let lower = name.to_ascii_lowercase();
    if lower == "scratch"
        || name.contains('$')
        || name.bytes().all(|b| b.is_ascii_digit())
        || stages.contains(&lower)
        || contexts.iter().any(|c| c.eq_ignore_ascii_case(name))
    {
        Named::Nothing
    } else {
        Named::Image(name)
    }
}

/// The base images of an inline Dockerfile (`text`, with compose's `$$`
/// already undone): every `FROM` and `COPY --from=` that names an image,
/// not `scratch`, an earlier stage, an additional context (named in
/// `contexts`) or a name built from `ARG`s (the builder resolves those
/// itself, and pulls them without the CVM's credentials). In order, each
/// once.
pub(super) fn base_images(
    site: &Site,
    text: &str,
    contexts: &[String],
) -> Result<Vec<BaseImage>, ComposeError> {
    let mut stages: Vec<String> = Vec::new();
    let mut out: Vec<BaseImage> = Vec::new();
    let push = |written: &str, out: &mut Vec<BaseImage>| -> Result<(), ComposeError> {
        let reference = ImageReference::parse(written).map_err(|e| {
            site.err(&format!(
                "names `{}` in its `build.dockerfile_inline`, which is not an image reference ({}): name the base image like `debian:12` or `ghcr.io/owner/base:tag`",
                shown(written),
                shown(&e.to_string())
            ))
        })?;
        if !out.iter().any(|b| b.written == written) {
            out.push(BaseImage {
                written: written.to_owned(),
                reference,
            });
        }
        Ok(())
    };
    for ins in instructions(text) {
        match ins.keyword.as_str() {
            "FROM" => {
                let (image, stage) = from_parts(&ins.args);
                if let Some(image) = image
                    && let Named::Image(i) = classify(image, &stages, contexts)
                {
                    push(i, &mut out)?;
                }
                if let Some(stage) = stage {
                    stages.push(stage.to_ascii_lowercase());
                }
            }
            "COPY" => {
                if let Some(from) = copy_from(&ins.args)
                    && let Named::Image(i) = classify(from, &stages, contexts)
                {
                    push(i, &mut out)?;
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Why [`interpolate`] could not: an invalid `$` (byte offset), or a
/// `${NAME:?message}` whose variable is unset (or empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Interpolation {
    Invalid(usize),
    Required { name: String, message: String },
}

/// Compose's interpolation of `text` (what compose does to
/// `dockerfile_inline` before building): `$$` is a `$`; `$NAME`,
/// `${NAME}` are `lookup(NAME)` (empty when unset); `${NAME:-default}`,
/// `${NAME-default}`, `${NAME:?message}`, `${NAME?message}`,
/// `${NAME:+alternative}`, `${NAME+alternative}` as in the shell. Any other
/// `$` is invalid, as it is to compose.
pub(super) fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Interpolation> {
    let is_start = |c: char| c == '_' || c.is_ascii_alphabetic();
    let is_name = |c: char| c == '_' || c.is_ascii_alphanumeric();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut offset = 0;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let here = offset + at;
        let after = &rest[at + 1..];
        let used = if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            let _ = tail;
            2
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or(Interpolation::Invalid(here))?;
            let inner = &body[..end];
            let name_len = inner.find(|c: char| !is_name(c)).unwrap_or(inner.len());
            let (name, op) = inner.split_at(name_len);
            if !name.starts_with(is_start) {
                return Err(Interpolation::Invalid(here));
            }
            let value = lookup(name);
            let set = value.is_some();
            let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
            let text = if op.is_empty() {
                value.unwrap_or_default()
            } else if let Some(d) = op.strip_prefix(":-") {
                if non_empty {
                    value.unwrap_or_default()
                } else {
                    d.to_owned()
                }
            } else if let Some(d) = op.strip_prefix('-') {
                if set {
                    value.unwrap_or_default()
                } else {
                    d.to_owned()
                }
            } else if let Some(m) = op.strip_prefix(":?") {
                if !non_empty {
                    return Err(Interpolation::Required {
                        name: name.to_owned(),
                        message: m.to_owned(),
                    });
                }
                value.unwrap_or_default()
            } else if let Some(m) = op.strip_prefix('?') {
                if !set {
                    return Err(Interpolation::Required {
                        name: name.to_owned(),
                        message: m.to_owned(),
                    });
                }
                value.unwrap_or_default()
            } else if let Some(a) = op.strip_prefix(":+") {
                if non_empty {
                    a.to_owned()
                } else {
                    String::new()
                }
            } else if let Some(a) = op.strip_prefix('+') {
                if set { a.to_owned() } else { String::new() }
            } else {
                return Err(Interpolation::Invalid(here));
            };
            out.push_str(&text);
            2 + end + 1
        } else if after.starts_with(is_start) {
            let len = after.find(|c: char| !is_name(c)).unwrap_or(after.len());
            out.push_str(&lookup(&after[..len]).unwrap_or_default());
            1 + len
        } else {
            return Err(Interpolation::Invalid(here));
        };
        rest = &rest[at + used..];
        offset = here + used;
    }
    out.push_str(rest);
    Ok(out)
}

/// `text` with the images named by `FROM` and `COPY --from=` replaced as
/// `names` says (a name as written → the name to build from); lines
/// without such a name are kept as written.
pub(super) fn rewrite_bases(text: &str, names: &BTreeMap<String, String>) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut stages: Vec<String> = Vec::new();
    for ins in instructions(text) {
        let target = match ins.keyword.as_str() {
            "FROM" => {
                let (image, stage) = from_parts(&ins.args);
                let image = image
                    .filter(|i| !stages.contains(&i.to_ascii_lowercase()))
                    .map(str::to_owned);
                if let Some(stage) = stage {
                    stages.push(stage.to_ascii_lowercase());
                }
                image
            }
            "COPY" => copy_from(&ins.args)
                .filter(|f| !stages.contains(&f.to_ascii_lowercase()))
                .map(str::to_owned),
            _ => None,
        };
        let Some(name) = target else { continue };
        let Some(new) = names.get(&name) else {
            continue;
        };
        let line = &mut lines[ins.line];
        let rewritten: Vec<String> = line
            .split_whitespace()
            .map(|w| {
                if w == name {
                    new.clone()
                } else if w.strip_prefix("--from=") == Some(name.as_str()) {
                    format!("--from={new}")
                } else {
                    w.to_owned()
                }
            })
            .collect();
        *line = rewritten.join(" ");
    }
    let mut out = lines.join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bases(text: &str, contexts: &[&str]) -> Vec<String> {
        let contexts: Vec<String> = contexts.iter().map(|c| (*c).to_owned()).collect();
        base_images(&Site::service("app", "build"), text, &contexts)
            .unwrap()
            .into_iter()
            .map(|b| b.written)
            .collect()
    }

    #[test]
    fn from_lines_stages_scratch_and_args() {
        let text = "# syntax=docker/dockerfile:1\nARG V=1\nFROM --platform=$BUILDPLATFORM golang:1.22 AS build\nRUN go build\nfrom build as test\nFROM scratch\nFROM ${BASE}\nCOPY --from=build /a /a\nCOPY --from=nginx:1.27 /etc/nginx /etc/nginx\nCOPY --from=0 /b /b\nFROM \\\n  debian:12\nFROM golang:1.22\n";
        assert_eq!(bases(text, &[]), ["golang:1.22", "nginx:1.27", "debian:12"]);
    }

    #[test]
    fn heredoc_bodies_are_not_instructions() {
        let text = "FROM node:22-slim\nRUN cat > index.mjs <<'SCRIPT'\nFROM evil:1\nimport x from \"y\"\nSCRIPT\nRUN <<-EOF sh\n\tFROM other:2\n\tEOF\nFROM alpine:3\n";
        assert_eq!(bases(text, &[]), ["node:22-slim", "alpine:3"]);
    }

    #[test]
    fn additional_contexts_are_not_pulled_by_name() {
        assert_eq!(
            bases("FROM base\nCOPY --from=assets /x /x\n", &["base", "assets"]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_bad_reference_is_refused() {
        let e = base_images(&Site::service("app", "build"), "FROM Bad:Ref:x\n", &[]).unwrap_err();
        assert!(
            e.message.contains("not an image reference"),
            "{}",
            e.message
        );
    }

    #[test]
    fn interpolation_as_compose_does_it() {
        let env = |k: &str| match k {
            "SET" => Some("v".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let i = |t: &str| interpolate(t, &env);
        assert_eq!(
            i("echo $$HOME $$$$ $SET ${SET}x").unwrap(),
            "echo $HOME $$ v vx"
        );
        assert_eq!(i("${UNSET}|$UNSET|${EMPTY}").unwrap(), "||");
        assert_eq!(
            i("${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${SET:-d}").unwrap(),
            "d d  d v"
        );
        assert_eq!(
            i("${SET:+a} ${EMPTY:+a} ${EMPTY+a} ${UNSET+a}").unwrap(),
            "a  a "
        );
        assert_eq!(i("root:${ROOT_PW:-123456}").unwrap(), "root:123456");
        assert_eq!(
            i("${UNSET:?say it}"),
            Err(Interpolation::Required {
                name: "UNSET".into(),
                message: "say it".into()
            })
        );
        assert!(i("${EMPTY?x}").is_ok());
        for (bad, at) in [
            ("a $", 2),
            ("a $(cmd)", 2),
            ("a ${1X}", 2),
            ("a ${X", 2),
            ("$ {X}", 0),
            ("${X:=d}", 0),
        ] {
            assert_eq!(i(bad), Err(Interpolation::Invalid(at)), "{bad}");
        }
    }

    #[test]
    fn rewrite_keeps_other_lines() {
        let names: BTreeMap<String, String> = [
            ("base".to_owned(), "sha256:abc".to_owned()),
            ("ubuntu:22.04@sha256:01".to_owned(), "sha256:def".to_owned()),
        ]
        .into();
        let text = "FROM ubuntu:22.04@sha256:01 AS b\n  RUN  echo base   x\nCOPY  --from=base /a /a\nFROM b\nFROM base\n";
        assert_eq!(
            rewrite_bases(text, &names),
            "FROM sha256:def AS b\n  RUN  echo base   x\nCOPY --from=sha256:abc /a /a\nFROM b\nFROM sha256:abc\n"
        );
    }
}
