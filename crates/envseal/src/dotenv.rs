//! `.env` parsing and rendering.
//!
//! Written here rather than taken from `dotenvy` for three reasons: `dotenvy`
//! expands `$VAR` from the process environment (I/O, and a password with a `$`
//! in it would silently change), its errors carry the offending line's text
//! (which may be a secret), and it reports no line numbers for valid entries
//! (we name the line of every variable that later fails validation).
//!
//! The dialect is Docker Compose's `.env` dialect without interpolation:
//! - blank lines and lines whose first non-blank character is `#` are skipped;
//! - `export ` before a key is allowed; whitespace around `=` is ignored;
//! - `KEY=unquoted value` runs to the end of the line, trailing whitespace
//!   trimmed; a `#` preceded by whitespace starts a comment;
//! - `KEY='single quoted'` is literal and may span lines;
//! - `KEY="double quoted"` may span lines and understands `\n`, `\r`, `\t`,
//!   `\"` and `\\`; any other backslash is kept as it is;
//! - after a closing quote only whitespace and a comment may follow;
//! - `$` is never special.

use crate::{Env, EnvVar, Origin, SecretValue, ValidationError};

/// What is wrong with a line of a `.env` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// A non-comment line without `=`.
    MissingEquals,
    /// A line starting with `=`.
    EmptyKey,
    /// A quote opened and never closed.
    UnterminatedQuote {
        /// The variable whose value is unterminated.
        key: String,
    },
    /// Text after a closing quote.
    TrailingCharacters {
        /// The variable with the trailing text.
        key: String,
    },
    /// A variable defined twice in the same input, or another rule broken.
    Invalid(ValidationError),
}

/// A `.env` input could not be parsed. Names the input and line, never the
/// line's text (it may be a secret).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ParseError {
    /// The input's name, usually its path.
    pub source_name: String,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub kind: ParseErrorKind,
}

impl ParseError {
    fn describe(&self) -> String {
        let at = format!("{}:{}", self.source_name, self.line);
        match &self.kind {
            ParseErrorKind::MissingEquals => {
                format!(
                    "{at}: expected KEY=VALUE, found a line without `=` (comment lines start with `#`)"
                )
            }
            ParseErrorKind::EmptyKey => {
                format!("{at}: the line starts with `=`; a variable name must come first")
            }
            ParseErrorKind::UnterminatedQuote { key } => {
                format!("{at}: the quoted value of `{key}` is never closed; add the closing quote")
            }
            ParseErrorKind::TrailingCharacters { key } => format!(
                "{at}: unexpected text after the closing quote of `{key}`; put the whole value inside the quotes"
            ),
            ParseErrorKind::Invalid(e) => e.to_string(),
        }
    }
}

/// Parses `.env` text. `source_name` (usually the path) is used in errors and
/// in each variable's [`Origin`]. A key defined twice is an error.
pub fn parse_dotenv(source_name: &str, text: &str) -> Result<Env, ParseError> {
    let mut vars = Vec::new();
    let lines: Vec<&str> = text.split('\n').collect();
    let mut i = 0;
    while i < lines.len() {
        let line_no = i + 1;
        let line = strip_cr(lines[i]);
        i += 1;
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let err = |kind| ParseError {
            source_name: source_name.to_owned(),
            line: line_no,
            kind,
        };
        let rest = match trimmed.strip_prefix("export") {
            Some(r) if r.starts_with([' ', '\t']) => r.trim_start(),
            _ => trimmed,
        };
        let Some(eq) = rest.find('=') else {
            return Err(err(ParseErrorKind::MissingEquals));
        };
        let key = rest[..eq].trim_end();
        if key.is_empty() {
            return Err(err(ParseErrorKind::EmptyKey));
        }
        let key = key.to_owned();
        let raw = rest[eq + 1..].trim_start_matches([' ', '\t']);
        let value = match raw.chars().next() {
            Some(q @ ('\'' | '"')) => {
                // Gather the quoted value, possibly over several lines.
                let mut buf = String::new();
                let mut cur = &raw[1..];
                let (value, after) = loop {
                    match find_closing(cur, q) {
                        Some(end) => {
                            buf.push_str(&cur[..end]);
                            break (buf, &cur[end + 1..]);
                        }
                        None => {
                            buf.push_str(cur);
                            if i >= lines.len() {
                                return Err(err(ParseErrorKind::UnterminatedQuote { key }));
                            }
                            buf.push('\n');
                            cur = strip_cr(lines[i]);
                            i += 1;
                        }
                    }
                };
                let after = after.trim_start();
                if !(after.is_empty() || after.starts_with('#')) {
                    return Err(err(ParseErrorKind::TrailingCharacters { key }));
                }
                if q == '"' {
                    unescape_double(&value)
                } else {
                    value
                }
            }
            _ => strip_comment(raw).trim_end().to_owned(),
        };
        vars.push(EnvVar::new(
            key,
            SecretValue::new(value),
            Origin::Line {
                source: source_name.to_owned(),
                line: line_no,
            },
        ));
    }
    Env::from_vars(vars).map_err(|e| {
        let line = match &e {
            ValidationError::DuplicateKey {
                origin: Origin::Line { line, .. },
                ..
            } => *line,
            _ => 0,
        };
        ParseError {
            source_name: source_name.to_owned(),
            line,
            kind: ParseErrorKind::Invalid(e),
        }
    })
}

fn strip_cr(line: &str) -> &str {
    line.strip_suffix('\r').unwrap_or(line)
}

/// Byte index of the closing quote `q` in `s`, skipping `\"` in double quotes.
fn find_closing(s: &str, q: char) -> Option<usize> {
    let mut escaped = false;
    for (idx, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if q == '"' && c == '\\' {
            escaped = true;
        } else if c == q {
            return Some(idx);
        }
    }
    None
}

fn unescape_double(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Cuts an unquoted value at a `#` that follows whitespace.
fn strip_comment(raw: &str) -> &str {
    let bytes = raw.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && i > 0 && (bytes[i - 1] == b' ' || bytes[i - 1] == b'\t') {
            return &raw[..i];
        }
    }
    raw
}

fn is_bare_safe(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-./:@%+,^~".contains(&b))
}

/// Renders `env` as `.env` lines that [`parse_dotenv`] reads back to the
/// same values: bare when only safe characters occur, single-quoted when the
/// value has no `'` and no line break, double-quoted with escapes otherwise.
///
/// The result holds the plaintext values: the caller decides where it goes.
pub fn render_dotenv(env: &Env) -> zeroize::Zeroizing<String> {
    let mut out = zeroize::Zeroizing::new(String::new());
    for var in env.vars() {
        let v = var.value.expose();
        out.push_str(&var.key);
        out.push('=');
        if is_bare_safe(v) {
            out.push_str(v);
        } else if !v.contains(['\'', '\n', '\r']) {
            out.push('\'');
            out.push_str(v);
            out.push('\'');
        } else {
            out.push('"');
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    _ => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::pairs;
    use proptest::prelude::*;

    #[test]
    fn dialect() {
        let text = "# comment\n\
                    \n\
                    export A=1\n\
                    B = spaced value   # trailing comment\n\
                    C='single # not a comment $HOME'\n\
                    D=\"line1\\nline2 \\\"q\\\" \\\\ \\x\"\r\n\
                    E=\"multi\n\
                    line\"\n\
                    F=\n\
                    G=a=b=c\n\
                    H=pa#ss\n\
                    I='a\n\
                    b' # c\n\
                    exported=x\n";
        let env = parse_dotenv(".env", text).unwrap();
        let want = [
            ("A", "1"),
            ("B", "spaced value"),
            ("C", "single # not a comment $HOME"),
            ("D", "line1\nline2 \"q\" \\ \\x"),
            ("E", "multi\nline"),
            ("F", ""),
            ("G", "a=b=c"),
            ("H", "pa#ss"),
            ("I", "a\nb"),
            ("exported", "x"),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(pairs(&env), want);
        let e = env.get_var("E").unwrap();
        assert_eq!(
            e.origin,
            Origin::Line {
                source: ".env".into(),
                line: 7
            }
        );
        assert_eq!(
            env.get_var("exported").unwrap().origin,
            Origin::Line {
                source: ".env".into(),
                line: 14
            }
        );
    }

    #[test]
    fn errors_name_line_and_never_the_text() {
        let cases = [
            ("A=1\nSECRET-CANARY\n", 2, "without `=`"),
            ("A=1\n=CANARY\n", 2, "starts with `=`"),
            ("A=1\nB=\"CANARY\n\n", 2, "never closed"),
            ("B='CANARY' CANARY\n", 1, "after the closing quote of `B`"),
            (
                "B=CANARY\nB=CANARY2\n",
                2,
                "`B` is defined again (first at f.env:1)",
            ),
        ];
        for (text, line, needle) in cases {
            let err = parse_dotenv("f.env", text).unwrap_err();
            let msg = err.to_string();
            assert_eq!(err.line, line, "{msg}");
            assert!(msg.starts_with(&format!("f.env:{line}: ")), "{msg}");
            assert!(msg.contains(needle), "{msg}");
            assert!(!msg.contains("CANARY"), "{msg}");
        }
    }

    fn value_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9_./:@-]{0,20}",
            "[ -~]{0,40}",
            any::<String>(),
            "[ \"'#=$\\\\\n\r\ta-z]{0,30}",
        ]
    }

    proptest! {
        #[test]
        fn render_then_parse_is_identity(
            vals in proptest::collection::vec(value_strategy(), 0..12)
        ) {
            let vars = vals.iter().enumerate()
                .map(|(i, v)| EnvVar::new(format!("K_{i}"), v.as_str(), Origin::Argument))
                .collect();
            let env = Env::from_vars(vars).unwrap();
            let text = render_dotenv(&env);
            let back = parse_dotenv("rendered", &text).unwrap();
            prop_assert_eq!(pairs(&back), pairs(&env));
        }
    }
}
