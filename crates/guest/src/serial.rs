//! [`SerialLog`]: the CVM's serial console, as timestamped, redacted lines.
//!
//! One call to [`SerialLog::line`] writes exactly one physical line: the
//! node derives the CVM's status from the final `BOOT OK` / `BOOT FAILED`
//! line, and env keys, service names and the compose tool's output are
//! tenant text, so line breaks and every other control character are shown
//! escaped ([`escape_controls`]) and cannot start a forged line.

use crate::redact::Redactor;
use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the boot writes its lines (stdout in a CVM; a buffer in tests).
/// Every line passes through the [`Redactor`] first.
#[derive(Clone)]
pub struct SerialLog {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    redactor: Arc<Mutex<Redactor>>,
}

impl SerialLog {
    /// A log writing to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Arc::new(Mutex::new(out)),
            redactor: Arc::new(Mutex::new(Redactor::default())),
        }
    }

    /// Replaces the redactor (once the env is decrypted). The public strings
    /// declared before ([`SerialLog::set_public`]) are kept, with the new
    /// redactor's own.
    pub fn set_redactor(&self, mut redactor: Redactor) {
        let mut current = self.redactor();
        let mut public = current.public().to_vec();
        public.extend_from_slice(redactor.public());
        redactor.set_public(public);
        *current = redactor;
    }

    /// Declares text that is not secret, e.g. the compose file's image
    /// references as written and normalised (see [`Redactor::set_public`]):
    /// a secret inside one of them is left readable there. Replaces the
    /// strings declared before.
    pub fn set_public(&self, public: Vec<String>) {
        self.redactor().set_public(public);
    }

    /// Redacts `text` with the current redactor (control characters are
    /// left as they are: see [`SerialLog::line`]).
    pub fn redact(&self, text: &str) -> String {
        self.redactor().apply(text)
    }

    /// Writes `text` as one timestamped line: redacted, then with every
    /// control character escaped (so a multi-line secret is still found,
    /// and a line break in `text` is shown as `\n`, not written).
    pub fn line(&self, text: &str) {
        let stamp = timestamp(SystemTime::now());
        let shown = {
            let redactor = self.redactor();
            let redacted = redactor.apply(text);
            match escape_controls(&redacted) {
                Cow::Borrowed(_) => redacted,
                // Once more: what the escapes spell may be a secret's
                // escaped form (e.g. a value holding a literal `\n`).
                Cow::Owned(escaped) => redactor.apply(&escaped),
            }
        };
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = out.write_all(format!("[{stamp}] {shown}\n").as_bytes());
        let _ = out.flush();
    }

    fn redactor(&self) -> MutexGuard<'_, Redactor> {
        self.redactor.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `text` with every character that could break or disguise a line shown
/// escaped: `\n`, `\r`, `\t`, other C0 controls and DEL as `\x1b`, C1
/// controls, the Unicode line and paragraph separators and the bidi
/// controls as `\u{2028}`. Backslashes are left as they are: the escaping
/// keeps lines apart, it is not meant to be undone.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Controls (C0, DEL, C1), line and paragraph separators, bidi controls.
fn needs_escape(c: char) -> bool {
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

/// `2026-11-27T07:40:01.123Z` (RFC 3339, UTC, milliseconds); a clock set
/// before 1970 reads as the epoch.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t.max(UNIX_EPOCH)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::boot::BootOutcome;
    use envseal::{Env, EnvVar, Origin};

    /// What a [`SerialLog`] writes.
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

    impl Capture {
        /// The physical lines written, timestamps removed.
        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().unwrap().clone();
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.is_empty() || text.ends_with('\n'));
            text.split_terminator('\n')
                .map(|l| {
                    assert!(l.starts_with('[') && l[25..].starts_with("] "), "{l:?}");
                    l[27..].to_owned()
                })
                .collect()
        }
    }

    fn log() -> (SerialLog, Capture) {
        let capture = Capture::default();
        (SerialLog::new(Box::new(capture.clone())), capture)
    }

    #[test]
    fn a_line_break_cannot_forge_a_line() {
        let (serial, out) = log();
        serial.line("service x\nBOOT OK in 1.00 s");
        serial.line("compose: done\r\nBOOT FAILED: config: forged\u{2028}BOOT OK in 0.10 s\u{85}");
        assert_eq!(
            out.lines(),
            [
                "service x\\nBOOT OK in 1.00 s",
                "compose: done\\r\\nBOOT FAILED: config: forged\\u{2028}BOOT OK in 0.10 s\\u{85}",
            ]
        );
        for l in out.lines() {
            assert_eq!(BootOutcome::parse(&l), None);
        }
        // Unlike lines written as such.
        serial.line("BOOT OK in 1.00 s");
        assert!(BootOutcome::parse(out.lines().last().unwrap()).is_some());
    }

    #[test]
    fn control_characters_are_escaped() {
        let (serial, out) = log();
        serial.line("\u{1b}[2K\u{1b}]0;title\u{7}\tok\u{0}\u{7f}\u{9b}31m \u{202e}txt.exe\u{2066}");
        serial.line("");
        serial.line("plain: é 🙂 \\n stays");
        assert_eq!(
            out.lines(),
            [
                "\\x1b[2K\\x1b]0;title\\x07\\tok\\x00\\x7f\\u{9b}31m \\u{202e}txt.exe\\u{2066}",
                "",
                "plain: é 🙂 \\n stays",
            ]
        );
        assert_eq!(escape_controls("no controls"), Cow::Borrowed("no controls"));
    }

    #[test]
    fn secrets_are_redacted_before_escaping() {
        let (serial, out) = log();
        serial.line("before the env: hunter2-secret");
        let env = Env::from_vars(vec![
            EnvVar::new("PEM", "line-one-secret\nline-two-secret", Origin::Sealed),
            EnvVar::new("TOKEN", "hunter2-secret", Origin::Sealed),
            EnvVar::new("ESCAPED", r"tab\tin-value", Origin::Sealed),
        ])
        .unwrap();
        serial.set_redactor(Redactor::for_env(&env));
        serial.line("pem: line-one-secret\nline-two-secret; token hunter2-secret");
        serial.line("compose: line-two-secret");
        serial.line("tab\tin-value");
        assert_eq!(
            out.lines(),
            [
                "before the env: hunter2-secret",
                "pem: [redacted:PEM]; token [redacted:TOKEN]",
                "compose: [redacted:PEM]",
                "[redacted:ESCAPED]",
            ]
        );
        assert_eq!(serial.redact("a\nline-one-secret"), "a\n[redacted:PEM]");
    }

    #[test]
    fn public_strings_survive_a_new_redactor() {
        let (serial, out) = log();
        serial.set_public(vec!["127.0.0.1:1/alice-user/web:1".into()]);
        let env = Env::from_vars(vec![
            EnvVar::new("DSTACK_DOCKER_USERNAME", "alice-user", Origin::Sealed),
            EnvVar::new("DSTACK_DOCKER_PASSWORD", "pw", Origin::Sealed),
        ])
        .unwrap();
        serial.set_redactor(Redactor::for_env(&env));
        serial.line("service web: 127.0.0.1:1/alice-user/web:1 (login alice-user)");
        assert_eq!(
            out.lines(),
            ["service web: 127.0.0.1:1/alice-user/web:1 (login [redacted:DSTACK_DOCKER_USERNAME])"]
        );
    }

    proptest::proptest! {
        #[test]
        fn one_call_is_one_physical_line(text in "\\PC*|[\\x00-\\x7f\u{80}-\u{9f}\u{2028}\u{2029}a]*") {
            let (serial, out) = log();
            serial.line(&text);
            let written = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            proptest::prop_assert!(written.ends_with('\n'));
            let body = &written[..written.len() - 1];
            proptest::prop_assert!(!body.chars().any(needs_escape), "{:?}", body);
        }
    }

    #[test]
    fn timestamps() {
        use std::time::Duration;
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            timestamp(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_millis(951_782_400_007)),
            "2000-02-29T00:00:00.007Z"
        );
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_millis(1_795_764_001_123)),
            "2026-11-27T07:20:01.123Z"
        );
    }
}
