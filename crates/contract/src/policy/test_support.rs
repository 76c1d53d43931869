//! Helpers for the policy's tests: a small file to vary, and assertions
//! that a file is refused (naming the service and key) or allowed.

use super::{ComposeError, ComposeFile};

/// A file with one service `web` (plus `db`) whose extra keys are
/// `extra` (indented by four spaces, one key per line).
pub(super) fn web(extra: &str) -> String {
    let extra: String = extra.lines().map(|l| format!("    {l}\n")).collect();
    format!("services:\n  web:\n    image: alice/web:1\n{extra}  db:\n    image: postgres:16\n")
}

pub(super) fn refused(yaml: &str) -> ComposeError {
    let e = match ComposeFile::parse_and_check(yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e,
    };
    assert!(
        !e.message.contains('\n') && !e.message.contains('\r'),
        "{:?}",
        e.message
    );
    assert_eq!(e.to_string(), e.message);
    e
}

/// Refused for `web`, naming the service and `key`.
pub(super) fn refused_at(yaml: &str, key: &str) -> ComposeError {
    let e = refused(yaml);
    assert_eq!(e.service.as_deref(), Some("web"), "{yaml}\n{e:?}");
    assert_eq!(e.key.as_deref(), Some(key), "{yaml}\n{e:?}");
    assert!(e.message.contains("service `web`"), "{}", e.message);
    assert!(e.message.contains(&format!("`{key}")), "{}", e.message);
    e
}

pub(super) fn refused_top(yaml: &str, key: &str) -> ComposeError {
    let e = refused(yaml);
    assert_eq!(e.service, None, "{e:?}");
    assert_eq!(e.key.as_deref(), Some(key), "{e:?}");
    assert!(e.message.contains(&format!("`{key}")), "{}", e.message);
    e
}

pub(super) fn allowed(yaml: &str) {
    if let Err(e) = ComposeFile::parse_and_check(yaml) {
        panic!("refused: {e:?}\n{yaml}");
    }
}

/// The container isolation mode's check of `yaml`.
pub(super) fn in_container(yaml: &str) -> Result<ComposeFile, ComposeError> {
    ComposeFile::parse_and_check_for(yaml, crate::isolation::Isolation::Container)
}

/// Allowed in the container mode.
pub(super) fn allowed_in_container(yaml: &str) -> ComposeFile {
    match in_container(yaml) {
        Ok(f) => f,
        Err(e) => panic!("refused in the container mode: {e:?}\n{yaml}"),
    }
}

/// Refused in the container mode for `web`, naming the service and `key`,
/// in one sentence.
pub(super) fn refused_in_container_at(yaml: &str, key: &str) -> ComposeError {
    let e = match in_container(yaml) {
        Ok(_) => panic!("accepted in the container mode:\n{yaml}"),
        Err(e) => e,
    };
    assert!(!e.message.contains('\n'), "{:?}", e.message);
    assert_eq!(e.service.as_deref(), Some("web"), "{yaml}\n{e:?}");
    assert_eq!(e.key.as_deref(), Some(key), "{yaml}\n{e:?}");
    assert!(e.message.contains("service `web`"), "{}", e.message);
    e
}
