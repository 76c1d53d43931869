//! `.env` parsing (`envseal::parse_dotenv`), for any text:
//! - it never panics;
//! - an error names a line of the input (1..=lines), or line 0 for a rule
//!   that is not about one line, and starts with `NAME:LINE: `;
//! - every variable's origin names a line of the input;
//! - an env whose keys are valid variable names renders (`render_dotenv`)
//!   to text that parses back to the same keys and values, in order.
//!
//! Shared by the fuzz target `fuzz/fuzz_targets/dotenv.rs` and the property
//! test `crates/envseal/tests/fuzz_dotenv.rs` (included with `#[path]`).

use envseal::{Origin, ParseErrorKind, is_valid_key, parse_dotenv, render_dotenv};

pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lines = text.split('\n').count();
    match parse_dotenv("in.env", &text) {
        Err(e) => {
            let msg = e.to_string();
            match e.kind {
                ParseErrorKind::Invalid(_) => assert!(e.line <= lines, "{msg}"),
                _ => {
                    assert!((1..=lines).contains(&e.line), "{msg}");
                    assert!(msg.starts_with(&format!("in.env:{}: ", e.line)), "{msg}");
                }
            }
        }
        Ok(env) => {
            for v in env.vars() {
                match &v.origin {
                    Origin::Line { source, line } => {
                        assert_eq!(source, "in.env");
                        assert!((1..=lines).contains(line), "{} at line {line}", v.key);
                    }
                    other => panic!("origin {other:?}"),
                }
                assert!(!v.key.is_empty());
            }
            if env.keys().all(is_valid_key) {
                let rendered = render_dotenv(&env);
                let back = parse_dotenv("rendered", &rendered)
                    .unwrap_or_else(|e| panic!("rendered env does not parse: {e}"));
                let pairs = |env: &envseal::Env| -> Vec<(String, String)> {
                    env.vars()
                        .iter()
                        .map(|v| (v.key.clone(), v.value.expose().to_owned()))
                        .collect()
                };
                assert_eq!(pairs(&back), pairs(&env), "render/parse round trip");
            }
        }
    }
}
