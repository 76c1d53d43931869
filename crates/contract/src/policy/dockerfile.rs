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

/// Compose's interpolation of `text`, for an inline Dockerfile: `$$` is a
/// `$`; any other `$` would be replaced with an env value (or is an error
/// to compose), so it is refused: `Err` with the byte offset of the first.
pub(super) fn unescape_dollars(text: &str) -> Result<String, usize> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some((_, '$')) => {
                chars.next();
                out.push('$');
            }
            _ => return Err(at),
        }
    }
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
    fn dollars() {
        assert_eq!(
            unescape_dollars("echo $$HOME $$$$").unwrap(),
            "echo $HOME $$"
        );
        assert_eq!(unescape_dollars("a ${X}"), Err(2));
        assert_eq!(unescape_dollars("a $X"), Err(2));
        assert_eq!(unescape_dollars("a $"), Err(2));
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
