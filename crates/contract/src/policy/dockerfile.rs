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

/// The first heredoc opened in `s` (`<<EOF`, `<<-EOF`, `<<'EOF'`,
/// `<<"EOF"`): where its token starts and ends, its terminator, and
/// whether tabs are stripped from its lines.
fn next_heredoc(s: &str) -> Option<(usize, usize, String, bool)> {
    let mut from = 0;
    while let Some(found) = s[from..].find("<<") {
        let at = from + found;
        let mut pos = at + 2;
        let strip_tabs = s[pos..].starts_with('-');
        if strip_tabs {
            pos += 1;
        }
        let quote = s[pos..].chars().next().filter(|c| *c == '\'' || *c == '"');
        let (word, end) = match quote {
            Some(q) => {
                let body = &s[pos + 1..];
                match body.find(q) {
                    Some(close) => (body[..close].to_owned(), pos + 1 + close + 1),
                    None => (String::new(), pos),
                }
            }
            None => {
                let word: String = s[pos..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let end = pos + word.len();
                (word, end)
            }
        };
        if !word.is_empty() && !word.starts_with(|c: char| c.is_ascii_digit()) {
            return Some((at, end, word, strip_tabs));
        }
        from = at + 2;
    }
    None
}

/// The terminators of the heredocs an instruction opens, in order, and
/// whether their tabs are stripped.
fn heredoc_words(args: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut rest = args;
    while let Some((_, end, word, strip_tabs)) = next_heredoc(rest) {
        out.push((word, strip_tabs));
        rest = &rest[end..];
    }
    out
}

/// `args` with the `k`-th heredoc token replaced by `with(k)`.
fn replace_heredocs(args: &str, with: impl Fn(usize) -> String) -> String {
    let mut out = String::new();
    let mut rest = args;
    let mut k = 0;
    while let Some((at, end, _, _)) = next_heredoc(rest) {
        out.push_str(&rest[..at]);
        out.push_str(&with(k));
        k += 1;
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Where the classic builder's `RUN` finds a heredoc's text, copied
/// into the image.
const HEREDOC_DIR: &str = "/tmp/.berth-heredoc";

/// An inline Dockerfile without heredocs, for a builder that has none
/// (the engine's classic builder, which Debian 12's compose uses): each
/// heredoc body becomes a file of the build context, named `tag-N`, read
/// from `source_prefix` (its folder, relative to the context):
///
/// - `RUN cmd <<EOF` … `EOF` becomes `COPY <file> /tmp/.berth-heredoc/…`
///   then `RUN cmd < /tmp/.berth-heredoc/…` (`RUN <<EOF` runs the text with
///   `sh`);
/// - `COPY <<EOF /dest` (and `ADD`) becomes `COPY <file> /dest`.
///
/// A body is taken as written: the shell does not expand `$` in it, as it
/// would in an unquoted `<<EOF` (compose's `${NAME}` are already done).
/// `text` without heredocs comes back as it is.
pub(super) fn lower_heredocs(
    text: &str,
    source_prefix: &str,
    tag: &str,
) -> (String, Vec<(String, String)>) {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = Vec::new();
    let mut files: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            out.push(lines[i].to_owned());
            i += 1;
            continue;
        }
        let start = i;
        let mut joined = String::new();
        while i < lines.len() {
            let end = lines[i].trim();
            i += 1;
            match end.strip_suffix('\\') {
                Some(head) => {
                    joined.push_str(head);
                    joined.push(' ');
                }
                None => {
                    joined.push_str(end);
                    break;
                }
            }
        }
        let joined = joined.trim();
        let (keyword, args) = joined
            .split_once(char::is_whitespace)
            .map_or((joined, ""), |(k, a)| (k, a.trim()));
        let upper = keyword.to_ascii_uppercase();
        let words = if matches!(upper.as_str(), "RUN" | "COPY" | "ADD") {
            heredoc_words(args)
        } else {
            Vec::new()
        };
        if words.is_empty() {
            out.extend(lines[start..i].iter().map(|l| (*l).to_owned()));
            continue;
        }
        let mut names = Vec::new();
        for (word, strip_tabs) in words {
            let mut body = String::new();
            while i < lines.len() {
                let line = lines[i];
                i += 1;
                let line = if strip_tabs {
                    line.trim_start_matches('\t')
                } else {
                    line
                };
                if line == word {
                    break;
                }
                body.push_str(line);
                body.push('\n');
            }
            let name = format!("{tag}-{}", files.len() + 1);
            files.push((name.clone(), body));
            names.push(name);
        }
        if upper == "RUN" {
            for name in &names {
                out.push(format!("COPY {source_prefix}{name} {HEREDOC_DIR}/{name}"));
            }
            // The flags (`--network=none`) stay in front, as written.
            let mut command = args;
            while command.starts_with("--") {
                command = command
                    .split_once(char::is_whitespace)
                    .map_or("", |(_, rest)| rest.trim_start());
            }
            let flags = args[..args.len() - command.len()].trim_end();
            let command = replace_heredocs(command, |k| format!("< {HEREDOC_DIR}/{}", names[k]));
            let command = if command.starts_with('<') {
                format!("sh {command}")
            } else {
                command
            };
            let line = [keyword, flags, command.as_str()]
                .iter()
                .filter(|p| !p.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            out.push(line);
        } else {
            let args = replace_heredocs(args, |k| format!("{source_prefix}{}", names[k]));
            out.push(format!("{keyword} {args}"));
        }
    }
    let mut text_out = out.join("\n");
    if text.ends_with('\n') {
        text_out.push('\n');
    }
    (text_out, files)
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

/// How far [`interpolate`] may grow a Dockerfile: env values may make it
/// up to this size (or its own, if larger), no more. Without a bound, a
/// short `$X` repeated all over a compose file, each a 128 KiB env value,
/// would have the boot agent (root of the host, in the container mode)
/// build and write gigabytes.
pub(super) const MAX_INTERPOLATED_BYTES: usize = 1 << 20;

/// Why [`interpolate`] could not: an invalid `$` (byte offset), a
/// `${NAME:?message}` whose variable is unset (or empty), or a text
/// grown past [`MAX_INTERPOLATED_BYTES`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Interpolation {
    Invalid(usize),
    Required { name: String, message: String },
    TooLarge,
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
    let cap = text.len().max(MAX_INTERPOLATED_BYTES);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut offset = 0;
    while let Some(at) = rest.find('$') {
        if out.len() > cap {
            return Err(Interpolation::TooLarge);
        }
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
    if out.len() > cap {
        return Err(Interpolation::TooLarge);
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
    fn env_values_cannot_grow_a_dockerfile_without_bound() {
        let big = "v".repeat(128 << 10);
        let env = |k: &str| (k == "X").then(|| big.clone());
        // Seven values fit in the bound; a few hundred short `$X` do not.
        assert!(interpolate(&"$X ".repeat(7), &env).is_ok());
        assert_eq!(
            interpolate(&"$X ".repeat(300), &env),
            Err(Interpolation::TooLarge)
        );
        // A text larger than the bound by itself is not refused for that.
        let long = "#".repeat(MAX_INTERPOLATED_BYTES + 1);
        assert_eq!(interpolate(&long, &env).as_deref(), Ok(long.as_str()));
    }

    #[test]
    fn heredocs_become_files_of_the_context() {
        let text = "FROM node:22-slim\nRUN cat > index.mjs <<'SCRIPT'\nimport x from \"y\"\nconst a = `${b}`\nSCRIPT\nRUN <<EOF\necho one\nEOF\nCOPY <<-EOT /etc/motd\n\thello\n\tEOT\nCMD [\"node\", \"index.mjs\"]\n";
        let (out, files) = lower_heredocs(text, "h/", "app");
        assert_eq!(
            out,
            "FROM node:22-slim\nCOPY h/app-1 /tmp/.berth-heredoc/app-1\nRUN cat > index.mjs < /tmp/.berth-heredoc/app-1\nCOPY h/app-2 /tmp/.berth-heredoc/app-2\nRUN sh < /tmp/.berth-heredoc/app-2\nCOPY h/app-3 /etc/motd\nCMD [\"node\", \"index.mjs\"]\n"
        );
        assert_eq!(
            files,
            [
                (
                    "app-1".to_owned(),
                    "import x from \"y\"\nconst a = `${b}`\n".to_owned()
                ),
                ("app-2".to_owned(), "echo one\n".to_owned()),
                ("app-3".to_owned(), "hello\n".to_owned()),
            ]
        );
        let (out, _) = lower_heredocs("RUN --network=none  cat  <<E  >  /x\nb\nE\n", "", "t");
        assert_eq!(
            out,
            "COPY t-1 /tmp/.berth-heredoc/t-1\nRUN --network=none cat  < /tmp/.berth-heredoc/t-1  >  /x\n"
        );
        let plain = "FROM a:1\nRUN echo x \\\n  && echo y\n";
        assert_eq!(
            lower_heredocs(plain, "", "t"),
            (plain.to_owned(), Vec::new())
        );
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
