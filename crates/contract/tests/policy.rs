//! The compose policy through the crate's public API, as the control plane
//! and the boot agent call it.

use contract::ComposeFile;
use contract::policy::FORBIDDEN_SERVICE_KEYS;
use proptest::prelude::*;
use serde_yaml_ng::{Mapping, Value};

/// A one-service file with `key: value` added to the service `name`.
fn file(name: &str, key: &str, value: Value) -> String {
    let mut svc = Mapping::new();
    svc.insert("image".into(), "alice/web:1".into());
    svc.insert(key.into(), value);
    let mut services = Mapping::new();
    services.insert(name.into(), Value::Mapping(svc));
    let mut doc = Mapping::new();
    doc.insert("services".into(), Value::Mapping(services));
    serde_yaml_ng::to_string(&doc).unwrap()
}

fn assert_clean(message: &str) {
    assert!(
        !message.chars().any(char::is_control),
        "raw control character in {message:?}"
    );
}

#[test]
fn every_forbidden_key_is_refused_by_parse_and_check() {
    for (key, _, _) in FORBIDDEN_SERVICE_KEYS {
        let e = ComposeFile::parse_and_check(&file("web", key, Value::from("x"))).unwrap_err();
        assert_eq!(e.key.as_deref(), Some(*key));
        assert_eq!(e.service.as_deref(), Some("web"));
    }
    let ok = ComposeFile::parse_and_check(&file("web", "restart", Value::from("always"))).unwrap();
    assert_eq!(ok.images[0].service, "web");
}

proptest! {
    #[test]
    fn messages_never_carry_raw_control_characters(
        name in "\\PC{0,3}[\\n\\r\\t\\x1b\\u{202e}]?\\PC{0,3}",
        text in "[a-z/.:$\\n\\x1b ]{0,12}",
    ) {
        for (key, value) in [
            ("network_mode", Value::from(text.as_str())),
            ("volumes", Value::Sequence(vec![Value::from(text.as_str())])),
            ("labels", Value::Sequence(vec![Value::from(format!("com.docker.compose.{text}=1"))])),
            ("extends", Value::from(text.as_str())),
            ("privileged", Value::Bool(true)),
        ] {
            for service in [name.as_str(), "web"] {
                if let Err(e) = ComposeFile::parse_and_check(&file(service, key, value.clone())) {
                    assert_clean(&e.message);
                    if let Some(s) = &e.service {
                        assert_clean(s);
                    }
                }
            }
        }
    }
}
