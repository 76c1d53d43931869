//! The serial log (`guest::SerialLog::line` with the boot's
//! `guest::redact::Redactor::for_env`), for any env values and any text:
//! - one call writes exactly one physical line: `[timestamp] text\n`, with
//!   no line break and no other control, separator or bidi character;
//! - a secret never appears in the line: the text is a prefix, one form of
//!   a secret (as is, JSON- or `{:?}`-escaped, percent-encoded, base64 of
//!   the value or of the Docker login, the line of a multi-line value), and
//!   a suffix; once the `[redacted:KEY]` labels are taken out, no value that
//!   must be redacted is left, neither as is nor as the line escapes it.
//!
//! Shared by the fuzz target `fuzz/fuzz_targets/serial_log.rs` and the
//! property test `crates/guest/tests/fuzz_serial_log.rs`.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use envseal::{Env, EnvVar, Origin};
use guest::SerialLog;
use guest::redact::{MIN_REDACTED_LEN, Redactor};
use guest::serial::escape_controls;
use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What `SerialLog::line` must never write raw.
fn breaks_line(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

const KEYS: [&str; 3] = [
    "API_TOKEN",
    "DSTACK_DOCKER_USERNAME",
    "DSTACK_DOCKER_PASSWORD",
];

pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    // NUL-separated: up to three values, then a prefix and a suffix.
    let mut parts: Vec<&str> = text.split('\0').collect();
    let suffix = if parts.len() > 1 {
        parts.pop().unwrap()
    } else {
        ""
    };
    let prefix = if parts.len() > 1 {
        parts.pop().unwrap()
    } else {
        ""
    };
    let values: Vec<&str> = parts.into_iter().take(KEYS.len()).collect();
    let vars: Vec<EnvVar> = values
        .iter()
        .zip(KEYS)
        .map(|(v, k)| EnvVar::new(k, *v, Origin::Sealed))
        .collect();
    let env = Env::from_vars(vars).unwrap();
    let capture = Capture::default();
    let serial = SerialLog::new(Box::new(capture.clone()));
    serial.set_redactor(Redactor::for_env(&env));

    // The values the redactor promises to remove.
    let secrets: Vec<(&str, &str)> = values
        .iter()
        .zip(KEYS)
        .filter(|(v, k)| v.len() >= MIN_REDACTED_LEN || (*k != "API_TOKEN" && !v.is_empty()))
        .map(|(v, k)| (*v, k))
        .collect();
    let mut lines: Vec<String> = vec![format!("{prefix}{suffix}")];
    if let Some(&(value, _)) = secrets.get(usize::from(mode >> 4) % secrets.len().max(1)) {
        let forms: Vec<String> = match mode % 8 {
            0 => vec![value.to_owned()],
            1 => vec![serde_json::to_string(value).unwrap()],
            2 => vec![format!("{value:?}")],
            3 => vec![value.bytes().map(|b| format!("%{b:02X}")).collect()],
            4 => vec![STANDARD.encode(value), URL_SAFE_NO_PAD.encode(value)],
            5 => match (env.get(KEYS[1]), env.get(KEYS[2])) {
                (Some(u), Some(p)) if !u.is_empty() && !p.is_empty() => {
                    let pair = format!("{}:{}", u.expose(), p.expose());
                    vec![STANDARD.encode(pair)]
                }
                _ => vec![value.to_owned()],
            },
            6 => value
                .lines()
                .map(str::trim)
                .filter(|l| l.len() >= MIN_REDACTED_LEN)
                .map(str::to_owned)
                .collect(),
            _ => vec![escape_controls(value).into_owned()],
        };
        lines.extend(forms.iter().map(|f| format!("{prefix}{f}{suffix}")));
    }
    for line in &lines {
        let before = capture.0.lock().unwrap().len();
        serial.line(line);
        let all = capture.0.lock().unwrap().clone();
        let written = std::str::from_utf8(&all[before..]).expect("UTF-8 out");
        // Exactly one physical line.
        assert!(written.ends_with('\n'), "{written:?}");
        let body = &written[..written.len() - 1];
        assert!(!body.chars().any(breaks_line), "{body:?}");
        assert!(
            body.starts_with('[') && body[25..].starts_with("] "),
            "{body:?}"
        );
        let shown = &body[27..];
        // No secret, once the labels are out.
        let mut stripped = shown.to_owned();
        for key in KEYS {
            stripped = stripped.replace(&format!("[redacted:{key}]"), "\u{0}");
        }
        for &(value, key) in &secrets {
            for form in [value.to_owned(), escape_controls(value).into_owned()] {
                assert!(
                    !stripped.contains(form.as_str()),
                    "{key}={value:?} as {form:?} in {shown:?} (written for {line:?})"
                );
            }
        }
    }
}
