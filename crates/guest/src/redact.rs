//! [`Redactor`]: removes every secret value of the decrypted env from text,
//! in every form the boot is likely to print it: as is, line by line (the
//! compose tool's output is relayed one line at a time), base64 (a Basic
//! auth header, a docker `config.json` `auth` field, Docker's
//! `X-Registry-Auth`), percent-encoded, and JSON- or Rust-escaped.
//!
//! Public text (the compose file's image references) is left readable: an
//! occurrence of a secret inside an occurrence of a declared public string is
//! not replaced.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use envseal::Env;
use registry::credentials::{CREDENTIAL_VARIABLES, DOCKER_PASSWORD, DOCKER_USERNAME};
use std::cmp::Reverse;
use zeroize::Zeroizing;

/// Values shorter than this are not redacted from free text unless they are
/// registry credentials: a value like `1` or `true` would otherwise turn every
/// digit of the log into `[redacted]`. Credentials are redacted whatever their
/// length. Derived forms (the lines of a multi-line value, base64 encodings)
/// shorter than this are not redacted either.
pub const MIN_REDACTED_LEN: usize = 3;

/// The shortest piece of base64 looked for inside a longer base64 text (a
/// value encoded as part of a larger document, at any byte alignment).
/// Shorter pieces would match random base64 by chance.
pub const MIN_BASE64_FRAGMENT_LEN: usize = 8;

/// Variables whose values name public places, not secrets: the registry
/// hosts and the AWS region also appear in the (public, measured) compose
/// file, and redacting them would make every pull line and error unreadable.
pub const NOT_SECRET: &[&str] = &[
    "DSTACK_DOCKER_REGISTRY",
    "DSTACK_AWS_REGION",
    "DSTACK_AWS_ECR_REGISTRY",
];

/// One form of one secret value, and the key it is labelled with.
struct Pattern {
    text: Zeroizing<String>,
    key: String,
}

/// Replaces each secret value, in each of its forms, with `[redacted:KEY]`.
/// Longest occurrences first, so that a value containing another is removed
/// whole; text covered by several occurrences is replaced once.
///
/// Matching is tolerant of encodings: each character of a form may appear
/// literally, percent-encoded (`%2F`, `%2f`, `+` for a space), or
/// backslash-escaped (`\"`, `\\`, `\/`, `\n`, `\uXXXX` with surrogate pairs,
/// `\u{X}`, `\xHH`), in any mix. So a value is found in a URL, in what
/// `serde_json` writes inside a string, and in Rust's `{:?}` output.
#[derive(Default)]
pub struct Redactor {
    /// Every form of every value, longest first, without duplicates.
    patterns: Vec<Pattern>,
    /// For each byte, the patterns whose first byte it is (see `reindex`).
    by_lead: Vec<Vec<usize>>,
    /// How many values (and value pairs) were added.
    values: usize,
    /// Text that is not secret, whatever it contains.
    public: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Redactor({} values, {} public strings)",
            self.values,
            self.public.len()
        )
    }
}

impl Redactor {
    /// A redactor for every value of `env` (see [`MIN_REDACTED_LEN`] and
    /// [`NOT_SECRET`]), and for the base64 of `USERNAME:PASSWORD` of the
    /// Docker login (what a Basic auth header or a docker `config.json`
    /// `auth` field holds), labelled `DSTACK_DOCKER_PASSWORD`.
    pub fn for_env(env: &Env) -> Self {
        let mut r = Redactor::default();
        for v in env.vars() {
            if NOT_SECRET.contains(&v.key.as_str()) {
                continue;
            }
            let credential = CREDENTIAL_VARIABLES.contains(&v.key.as_str());
            if v.value.len() >= MIN_REDACTED_LEN || (credential && !v.value.is_empty()) {
                r.add_forms(v.value.expose(), &v.key);
            }
        }
        if let (Some(user), Some(password)) = (env.get(DOCKER_USERNAME), env.get(DOCKER_PASSWORD))
            && !user.is_empty()
            && !password.is_empty()
        {
            r.add_basic_auth_forms(user.expose(), password.expose(), DOCKER_PASSWORD);
        }
        r.reindex();
        r
    }

    /// Adds one secret `value`, labelled `key`: the value, each line of a
    /// multi-line value, and their encodings.
    pub fn add(&mut self, value: &str, key: &str) {
        self.add_forms(value, key);
        self.reindex();
    }

    /// Adds the base64 forms of `username:password` (only those: the two
    /// values are added on their own with [`Redactor::add`]), labelled `key`.
    pub fn add_basic_auth(&mut self, username: &str, password: &str, key: &str) {
        self.add_basic_auth_forms(username, password, key);
        self.reindex();
    }

    /// [`Redactor::add`] without `reindex`.
    fn add_forms(&mut self, value: &str, key: &str) {
        if value.is_empty() {
            return;
        }
        self.values += 1;
        self.push(value, key);
        if value.contains(['\n', '\r']) {
            for line in value.lines() {
                let line = line.trim();
                if line.len() >= MIN_REDACTED_LEN && line.len() < value.len() {
                    self.push(line, key);
                }
            }
        }
        self.push_base64(value.as_bytes(), key);
        let json = json_escaped(value);
        if json.as_str() != value {
            // X-Registry-Auth is the base64 of a JSON document.
            self.push_base64(json.as_bytes(), key);
        }
    }

    /// [`Redactor::add_basic_auth`] without `reindex`.
    fn add_basic_auth_forms(&mut self, username: &str, password: &str, key: &str) {
        if password.is_empty() {
            return;
        }
        self.values += 1;
        let pair = Zeroizing::new(format!("{username}:{password}"));
        self.push_base64(pair.as_bytes(), key);
        let pair = Zeroizing::new(format!(
            "{}:{}",
            json_escaped(username).as_str(),
            json_escaped(password).as_str()
        ));
        self.push_base64(pair.as_bytes(), key);
    }

    /// Sorts the patterns longest first, drops duplicates (the first added
    /// keeps its key) and indexes them by first byte.
    fn reindex(&mut self) {
        self.patterns.sort_by(|a, b| {
            b.text
                .len()
                .cmp(&a.text.len())
                .then_with(|| a.text.cmp(&b.text))
        });
        self.patterns
            .dedup_by(|later, first| later.text == first.text);
        self.by_lead = vec![Vec::new(); 256];
        for (i, p) in self.patterns.iter().enumerate() {
            if let Some(&lead) = p.text.as_bytes().first() {
                self.by_lead[usize::from(lead)].push(i);
            }
        }
    }

    /// Declares public strings (e.g. the compose file's image references, as
    /// written and normalised): an occurrence of a secret that lies inside an
    /// occurrence of one of them, and is shorter than it, is left as is. A
    /// secret equal to a public string is still redacted wherever it stands
    /// on its own. Replaces the strings declared before.
    pub fn set_public(&mut self, public: Vec<String>) {
        let mut public = public;
        public.retain(|p| !p.is_empty());
        public.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        public.dedup();
        self.public = public;
    }

    /// The public strings (see [`Redactor::set_public`]).
    pub fn public(&self) -> &[String] {
        &self.public
    }

    /// `text` with every secret replaced.
    pub fn apply(&self, text: &str) -> String {
        if self.patterns.is_empty() {
            return text.to_owned();
        }
        // Every occurrence of every form: (start, end, key). The patterns
        // tried at a position are those whose first byte is there, as is or
        // encoded (`%XX`, a backslash escape, `+` for a space).
        let mut found: Vec<(usize, usize, &str)> = Vec::new();
        let t = text.as_bytes();
        let mut nfa = Nfa::default();
        for (start, &b) in t.iter().enumerate() {
            if !text.is_char_boundary(start) {
                continue;
            }
            let mut utf8 = [0u8; 4];
            let encoded = match b {
                b'%' => hex(t.get(start + 1..start + 3)).map(|v| v as u8),
                b'\\' => {
                    unescape(t, start + 1).map(|(c, _)| c.encode_utf8(&mut utf8).as_bytes()[0])
                }
                b'+' => Some(b' '),
                _ => None,
            };
            let next = t.get(start + 1).copied();
            let literal = self.by_lead[usize::from(b)].iter().filter(|&&i| {
                // The second byte is there as is, or starts an encoding (and
                // the first byte, if it may start one itself, is not checked).
                encoded.is_some()
                    || match (self.patterns[i].text.as_bytes().get(1), next) {
                        (None, _) => true,
                        (Some(_), None) => false,
                        (Some(&want), Some(got)) => {
                            want == got || matches!(got, b'%' | b'\\' | b'+')
                        }
                    }
            });
            let encoded = encoded
                .filter(|&e| e != b)
                .map(|e| self.by_lead[usize::from(e)].as_slice())
                .unwrap_or_default();
            for &i in literal.chain(encoded) {
                let p = &self.patterns[i];
                if let Some(end) = nfa.end(t, start, &p.text) {
                    found.push((start, end, &p.key));
                }
            }
        }
        if found.is_empty() {
            return text.to_owned();
        }
        // Public strings, and labels already in the text (so that applying
        // twice changes nothing), protect what lies inside them.
        let mut protected: Vec<(usize, usize)> = Vec::new();
        for p in &self.public {
            occurrences(text, p, &mut protected);
        }
        let mut labels: Vec<&str> = self.patterns.iter().map(|p| p.key.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        for key in labels {
            occurrences(text, &label(key), &mut protected);
        }
        found.retain(|&(s, e, _)| {
            !protected
                .iter()
                .any(|&(ps, pe)| ps <= s && e <= pe && pe - ps > e - s)
        });
        // Longest first: each occurrence claims what is still unclaimed.
        found.sort_by_key(|&(s, e, _)| (Reverse(e - s), s));
        let mut claimed: Vec<(usize, usize, &str)> = Vec::new();
        for (s, e, key) in found {
            let mut pieces = vec![(s, e)];
            for &(cs, ce, _) in &claimed {
                pieces = pieces
                    .into_iter()
                    .flat_map(|(a, b)| {
                        if ce <= a || b <= cs {
                            vec![(a, b)]
                        } else {
                            [(a, cs.max(a)), (ce.min(b), b)]
                                .into_iter()
                                .filter(|(x, y)| x < y)
                                .collect()
                        }
                    })
                    .collect();
            }
            claimed.extend(pieces.into_iter().map(|(a, b)| (a, b, key)));
        }
        claimed.sort_by_key(|&(s, _, _)| s);
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (s, e, key) in claimed {
            // Occurrences start and end on character boundaries (see
            // `Nfa::end`); `get` keeps a mistake from panicking.
            out.push_str(text.get(at..s).unwrap_or_default());
            out.push_str(&label(key));
            at = e;
        }
        out.push_str(text.get(at..).unwrap_or_default());
        out
    }

    /// Adds one form (callers check lengths; `reindex` drops duplicates).
    fn push(&mut self, form: &str, key: &str) {
        self.patterns.push(Pattern {
            text: Zeroizing::new(form.to_owned()),
            key: key.to_owned(),
        });
    }

    /// Adds the base64 forms of `bytes`: standard and URL-safe, padded and
    /// unpadded, and the pieces that appear when `bytes` are encoded inside
    /// a longer text, at each of the three byte alignments.
    fn push_base64(&mut self, bytes: &[u8], key: &str) {
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            let encoded = Zeroizing::new(engine.encode(bytes));
            if encoded.len() >= MIN_REDACTED_LEN {
                self.push(&encoded, key);
            }
        }
        for shift in 0..3 {
            let mut shifted = Zeroizing::new(Vec::with_capacity(shift + bytes.len()));
            shifted.resize(shift, 0);
            shifted.extend_from_slice(bytes);
            // Character j encodes bits [6j, 6j + 6): keep those that depend
            // on `bytes` alone.
            let first = (8 * shift).div_ceil(6);
            let end = 8 * shifted.len() / 6;
            if end < first || end - first < MIN_BASE64_FRAGMENT_LEN {
                continue;
            }
            for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                let encoded = Zeroizing::new(engine.encode(shifted.as_slice()));
                self.push(&encoded[first..end], key);
            }
        }
    }
}

/// `[redacted:KEY]`.
fn label(key: &str) -> String {
    format!("[redacted:{key}]")
}

/// What `serde_json` writes for `value` between the quotes.
fn json_escaped(value: &str) -> Zeroizing<String> {
    let quoted = Zeroizing::new(serde_json::to_string(value).unwrap_or_default());
    Zeroizing::new(
        quoted
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .unwrap_or_default()
            .to_owned(),
    )
}

/// Every occurrence of `needle` in `text`, overlapping ones included.
fn occurrences(text: &str, needle: &str, out: &mut Vec<(usize, usize)>) {
    let Some(first) = needle.chars().next() else {
        return;
    };
    let mut from = 0;
    while let Some(i) = text[from..].find(needle) {
        let start = from + i;
        out.push((start, start + needle.len()));
        from = start + first.len_utf8();
    }
}

/// Matches a pattern at a position of a text, in any mix of literal,
/// percent-encoded and backslash-escaped characters: a small NFA over the
/// text positions reachable after each character of the pattern.
#[derive(Default)]
struct Nfa {
    here: Vec<usize>,
    next: Vec<usize>,
}

impl Nfa {
    /// The furthest end of an occurrence of `pattern` starting at `start`
    /// (a character boundary). The end is a character boundary too: a
    /// literal UTF-8 lead byte in valid text is followed by its own
    /// continuation bytes, and every escape is ASCII.
    fn end(&mut self, t: &[u8], start: usize, pattern: &str) -> Option<usize> {
        self.here.clear();
        self.here.push(start);
        for c in pattern.chars() {
            self.next.clear();
            for &at in &self.here {
                char_ends(t, at, c, &mut self.next);
            }
            if self.next.is_empty() {
                return None;
            }
            self.next.sort_unstable();
            self.next.dedup();
            std::mem::swap(&mut self.here, &mut self.next);
        }
        self.here.last().copied()
    }
}

/// Where one character `c` of a pattern can end when it starts at `at`.
fn char_ends(t: &[u8], at: usize, c: char, out: &mut Vec<usize>) {
    let mut utf8 = [0u8; 4];
    byte_ends(t, at, c.encode_utf8(&mut utf8).as_bytes(), out);
    match t.get(at) {
        Some(b'+') if c == ' ' => out.push(at + 1),
        Some(b'\\') => out.extend(escape_end(t, at + 1, c)),
        _ => {}
    }
}

/// Where `bytes` end when each is written as itself or as `%XX`.
fn byte_ends(t: &[u8], at: usize, bytes: &[u8], out: &mut Vec<usize>) {
    let Some((&b, rest)) = bytes.split_first() else {
        out.push(at);
        return;
    };
    if t.get(at) == Some(&b) {
        byte_ends(t, at + 1, rest, out);
    }
    if t.get(at) == Some(&b'%') && hex(t.get(at + 1..at + 3)) == Some(u32::from(b)) {
        byte_ends(t, at + 3, rest, out);
    }
}

/// Where the escape of `c` that starts after a backslash at `at` ends.
fn escape_end(t: &[u8], at: usize, c: char) -> Option<usize> {
    unescape(t, at).and_then(|(d, end)| (d == c).then_some(end))
}

/// The character a backslash escape spells, the backslash just before `at`,
/// and where the escape ends: JSON's (`\"`, `\\`, `\/`, `\b`, `\f`, `\n`,
/// `\r`, `\t`, `\uXXXX` with surrogate pairs) and Rust's (`\'`, `\0`,
/// `\xHH`, `\u{X}`).
fn unescape(t: &[u8], at: usize) -> Option<(char, usize)> {
    let short = match *t.get(at)? {
        e @ (b'"' | b'\\' | b'/' | b'\'') => char::from(e),
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'0' => '\0',
        b'x' => {
            let c = hex(t.get(at + 1..at + 3))?;
            return (c < 0x80).then(|| (char::from(c as u8), at + 3));
        }
        b'u' if t.get(at + 1) == Some(&b'{') => {
            let close = (at + 2..t.len().min(at + 9)).find(|&i| t[i] == b'}')?;
            return Some((char::from_u32(hex(t.get(at + 2..close))?)?, close + 1));
        }
        b'u' => {
            let unit = hex(t.get(at + 1..at + 5))?;
            if !(0xd800..0xdc00).contains(&unit) {
                return Some((char::from_u32(unit)?, at + 5));
            }
            let low = hex(t.get(at + 7..at + 11))?;
            if t.get(at + 5..at + 7) != Some(b"\\u".as_slice()) || !(0xdc00..0xe000).contains(&low)
            {
                return None;
            }
            let c = 0x1_0000 + ((unit - 0xd800) << 10) + (low - 0xdc00);
            return Some((char::from_u32(c)?, at + 11));
        }
        _ => return None,
    };
    Some((short, at + 1))
}

/// The value of hex digits (either case), if `digits` are 1 to 6 of them.
fn hex(digits: Option<&[u8]>) -> Option<u32> {
    let digits = digits?;
    if digits.is_empty() || digits.len() > 6 {
        return None;
    }
    digits
        .iter()
        .try_fold(0u32, |v, &d| Some(v * 16 + char::from(d).to_digit(16)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envseal::{EnvVar, Origin};

    const USER: &str = "alice-canary";
    const PASSWORD: &str = "Canary pä\"ss/wörd+%=?&🙂";

    fn docker_env() -> Redactor {
        Redactor::for_env(
            &Env::from_vars(vec![
                EnvVar::new(DOCKER_USERNAME, USER, Origin::Sealed),
                EnvVar::new(DOCKER_PASSWORD, PASSWORD, Origin::Sealed),
                EnvVar::new("DSTACK_DOCKER_REGISTRY", "127.0.0.1:1", Origin::Sealed),
            ])
            .unwrap(),
        )
    }

    /// `text` redacted holds no trace of `secret` and shows `key`'s label.
    #[track_caller]
    fn hidden(r: &Redactor, text: &str, secret: &str, key: &str) -> String {
        let out = r.apply(text);
        assert!(!out.contains(secret), "{secret:?} left in {out:?}");
        assert!(out.contains(&label(key)), "no label {key} in {out:?}");
        out
    }

    #[test]
    fn redacts_longest_first_and_short_credentials() {
        let env = Env::from_vars(vec![
            EnvVar::new("DSTACK_DOCKER_PASSWORD", "pw", Origin::Sealed),
            EnvVar::new("TOKEN", "abcdef", Origin::Sealed),
            EnvVar::new("LONG", "xxabcdefxx", Origin::Sealed),
            EnvVar::new("FLAG", "1", Origin::Sealed),
        ])
        .unwrap();
        let r = Redactor::for_env(&env);
        assert_eq!(
            r.apply("login pw; xxabcdefxx abcdef 1"),
            "login [redacted:DSTACK_DOCKER_PASSWORD]; [redacted:LONG] [redacted:TOKEN] 1"
        );
    }

    #[test]
    fn partly_overlapping_values_are_both_removed() {
        let mut r = Redactor::default();
        r.add("abcdXY", "A");
        r.add("XYZ", "B");
        assert_eq!(r.apply("-abcdXYZ-"), "-[redacted:A][redacted:B]-");
    }

    #[test]
    fn not_secret_and_short_values_stay() {
        let r = docker_env();
        assert_eq!(r.apply("pull 127.0.0.1:1/x"), "pull 127.0.0.1:1/x");
    }

    #[test]
    fn base64_of_user_password_is_redacted() {
        let r = docker_env();
        let pair = format!("{USER}:{PASSWORD}");
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            let b64 = engine.encode(&pair);
            let out = hidden(
                &r,
                &format!("Authorization: Basic {b64}"),
                &b64,
                DOCKER_PASSWORD,
            );
            assert_eq!(
                out,
                "Authorization: Basic [redacted:DSTACK_DOCKER_PASSWORD]"
            );
            // And of the password alone.
            let b64 = engine.encode(PASSWORD);
            hidden(&r, &format!("token={b64};"), &b64, DOCKER_PASSWORD);
        }
        // A docker config.json, as serde_json writes it.
        let auth = STANDARD.encode(&pair);
        let config = serde_json::json!({"auths": {"127.0.0.1:1": {"auth": auth}}}).to_string();
        let out = hidden(&r, &config, &auth, DOCKER_PASSWORD);
        assert_eq!(
            out,
            r#"{"auths":{"127.0.0.1:1":{"auth":"[redacted:DSTACK_DOCKER_PASSWORD]"}}}"#
        );
    }

    #[test]
    fn base64_inside_a_longer_document_is_redacted() {
        let r = docker_env();
        // Docker's X-Registry-Auth: base64url of a JSON document, so the
        // password (JSON-escaped) sits at any byte alignment (serde_json
        // sorts the keys: "email" comes before "password").
        for pad in ["", "x", "xy"] {
            let doc = serde_json::json!({
                "username": USER,
                "password": PASSWORD,
                "email": pad,
                "serveraddress": "127.0.0.1:1",
            })
            .to_string();
            let header = URL_SAFE.encode(&doc);
            let out = r.apply(&format!("X-Registry-Auth: {header}"));
            assert!(out.contains(&label(DOCKER_PASSWORD)), "{out}");
            let password_json = serde_json::to_string(PASSWORD).unwrap();
            let alone = URL_SAFE_NO_PAD.encode(&password_json[1..password_json.len() - 1]);
            // No run of 12 characters of the password's own encoding is left.
            for i in 0..=alone.len() - 12 {
                let middle = &alone[i..i + 12];
                assert!(!out.contains(middle), "{middle} left in {out}");
            }
        }
    }

    #[test]
    fn url_encoded_forms_are_redacted() {
        let r = docker_env();
        // Everything but unreserved characters, upper- and lower-case hex.
        let percent = |lower: bool| -> String {
            PASSWORD
                .bytes()
                .map(|b| match b {
                    b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => {
                        char::from(b).to_string()
                    }
                    b if lower => format!("%{b:02x}"),
                    b => format!("%{b:02X}"),
                })
                .collect()
        };
        let (upper, lower) = (percent(false), percent(true));
        let form: String = url::form_urlencoded::byte_serialize(PASSWORD.as_bytes()).collect();
        assert!(form.contains('+'));
        for encoded in [upper, lower, form] {
            let out = hidden(
                &r,
                &format!("GET /token?account=x&password={encoded}&scope=y"),
                &encoded,
                DOCKER_PASSWORD,
            );
            assert_eq!(
                out,
                "GET /token?account=x&password=[redacted:DSTACK_DOCKER_PASSWORD]&scope=y"
            );
        }
        // userinfo of a URL, as the url crate writes it.
        let mut u = url::Url::parse("https://127.0.0.1:1/v2/").unwrap();
        u.set_username(USER).unwrap();
        u.set_password(Some(PASSWORD)).unwrap();
        let out = r.apply(u.as_str());
        assert_eq!(
            out,
            "https://[redacted:DSTACK_DOCKER_USERNAME]:[redacted:DSTACK_DOCKER_PASSWORD]@127.0.0.1:1/v2/"
        );
    }

    #[test]
    fn values_that_look_encoded_are_found_as_is_and_encoded() {
        let mut r = Redactor::default();
        r.add("%A0\\u0041+", "K");
        for text in ["%A0\\u0041+", "%25A0%5Cu0041%2B", "%25A0\\\\u0041+"] {
            assert_eq!(r.apply(&format!("<{text}>")), "<[redacted:K]>", "{text}");
        }
    }

    #[test]
    fn json_and_debug_escaped_forms_are_redacted() {
        let r = docker_env();
        let json = serde_json::to_string(PASSWORD).unwrap();
        assert!(json.contains("\\\""));
        let out = hidden(
            &r,
            &format!("{{\"password\":{json}}}"),
            &json,
            DOCKER_PASSWORD,
        );
        assert_eq!(out, "{\"password\":\"[redacted:DSTACK_DOCKER_PASSWORD]\"}");
        // ASCII-only JSON writers escape everything else as \uXXXX (and
        // surrogate pairs).
        let ascii: String = PASSWORD
            .encode_utf16()
            .map(|u| match u {
                0x22 => "\\\"".to_owned(),
                0x20..0x7f => char::from(u as u8).to_string(),
                _ => format!("\\u{u:04x}"),
            })
            .collect();
        assert!(ascii.contains("\\ud83d\\ude42"));
        hidden(&r, &format!("\"{ascii}\""), &ascii, DOCKER_PASSWORD);
        // Rust's Debug, with a control character in a value.
        let mut r = Redactor::default();
        r.add("tab\there\u{1}", "K");
        let debug = format!("{:?}", "tab\there\u{1}");
        assert_eq!(r.apply(&debug), "\"[redacted:K]\"");
        assert_eq!(r.apply("tab\\x09here\\x01"), "[redacted:K]");
    }

    #[test]
    fn multi_line_values_are_redacted_whole_and_by_line() {
        let value = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\r\n  second-line-of-the-key  \n-----END KEY-----\n";
        let r = Redactor::for_env(
            &Env::from_vars(vec![EnvVar::new("TLS_KEY", value, Origin::Sealed)]).unwrap(),
        );
        assert_eq!(
            r.apply(&format!("key: {value}.")),
            "key: [redacted:TLS_KEY]."
        );
        // The compose tool's output, relayed line by line.
        for relayed in [
            "compose: MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
            "compose:   second-line-of-the-key",
        ] {
            let out = r.apply(relayed);
            assert!(out.ends_with("[redacted:TLS_KEY]"), "{out}");
            assert!(!out.contains("MIIE") && !out.contains("second"), "{out}");
        }
        // JSON-escaped, the whole value at once.
        let json = serde_json::to_string(value).unwrap();
        assert_eq!(r.apply(&json), "\"[redacted:TLS_KEY]\"");
    }

    #[test]
    fn public_text_stays_readable() {
        let mut r = docker_env();
        let image = format!("127.0.0.1:1/{USER}/web:1");
        r.set_public(vec![image.clone(), String::new()]);
        assert_eq!(
            r.apply(&format!("pull: {image} as {USER}")),
            format!("pull: {image} as [redacted:DSTACK_DOCKER_USERNAME]")
        );
        // Not an occurrence of the public string: redacted.
        assert_eq!(
            r.apply(&format!("127.0.0.1:1/{USER}/web:2")),
            "127.0.0.1:1/[redacted:DSTACK_DOCKER_USERNAME]/web:2"
        );
        // A value equal to a public string is still redacted.
        let mut r = Redactor::default();
        r.add("web-token-1", "TOKEN");
        r.set_public(vec!["web-token-1".into(), "img/web-token-1:2".into()]);
        assert_eq!(
            r.apply("web-token-1 img/web-token-1:2"),
            "[redacted:TOKEN] img/web-token-1:2"
        );
        assert_eq!(r.public().len(), 2);
    }

    #[test]
    fn applying_twice_changes_nothing() {
        let mut r = Redactor::default();
        r.add("SECRET", "SECRET_KEY");
        r.add("acted", "OTHER");
        let once = r.apply("a SECRET b acted");
        assert_eq!(once, "a [redacted:SECRET_KEY] b [redacted:OTHER]");
        assert_eq!(r.apply(&once), once);
    }

    #[test]
    fn debug_is_secret_free() {
        let mut r = docker_env();
        r.set_public(vec!["img".into()]);
        let debug = format!("{r:?}");
        assert_eq!(debug, "Redactor(3 values, 1 public strings)");
        for p in &r.patterns {
            assert!(!debug.contains(p.text.as_str()));
        }
    }

    proptest::proptest! {
        #[test]
        fn every_form_of_any_value_is_redacted(
            value in "[ -~é🙂\n]{3,24}",
            before in "[a-z ]{0,5}",
            after in "[a-z ]{0,5}",
        ) {
            let mut r = Redactor::default();
            r.add(&value, "K");
            let json = serde_json::to_string(&value).unwrap();
            let percent: String = value.bytes().map(|b| format!("%{b:02x}")).collect();
            let forms = [
                value.clone(),
                json.clone(),
                percent,
                STANDARD.encode(&value),
                URL_SAFE_NO_PAD.encode(&value),
            ];
            for form in forms {
                let out = r.apply(&format!("{before}{form}{after}"));
                proptest::prop_assert!(out.contains("[redacted:K]"));
                let out = out.replace("[redacted:K]", "\0");
                proptest::prop_assert!(!out.contains(form.as_str()), "{:?} in {:?}", form, out);
            }
        }
    }
}
