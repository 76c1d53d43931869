//! Compose files and the policy under generated input: the fuzz target's
//! check (`fuzz/checks/compose.rs`: no panic, clean refusals, and whatever
//! passes renders to YAML that passes again) on generated compose
//! documents, and on every saved fuzz input. `BERTH_FUZZ_CASES` sets the
//! number of cases (`make fuzz`).

#[path = "../../../fuzz/checks/compose.rs"]
mod check;
#[path = "../../../fuzz/checks/support.rs"]
mod support;

use proptest::prelude::*;
use serde_yaml_ng::{Mapping, Value};

#[test]
fn saved_fuzz_inputs_pass() {
    support::replay(env!("CARGO_MANIFEST_DIR"), "compose", check::check);
}

/// The fuzzer starts from files that pass the policy, so that the rendering
/// round trip is explored from the first run.
#[test]
fn compose_seeds_pass_the_policy() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/compose");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let yaml = std::fs::read_to_string(&path).unwrap();
        if let Err(e) = contract::ComposeFile::parse_and_check(&yaml) {
            panic!("{}: {e}", path.display());
        }
    }
}

/// Leaf values, including the ones the policy looks at.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop_oneof![
            Just("bridge"),
            Just("none"),
            Just("host"),
            Just("service:web"),
            Just("container:x"),
            Just("private"),
            Just("json-file"),
            Just("syslog"),
            Just("data:/data"),
            Just("/host:/c"),
            Just("${X}"),
            Just("~"),
            Just("null"),
            Just("yes"),
            Just("0o17"),
            Just("1e3"),
            Just("- a"),
            Just("a: b"),
            Just("'q'"),
            Just("com.docker.compose.project=x"),
            Just(""),
            Just("*a"),
            Just("!reset x"),
        ]
        .prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::from),
        "[\\x00-\\x20\\x7f\\u{85}\\u{2028}\\u{feff}a:#'\"]{0,5}".prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        Just(Value::Null),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop_oneof![
            Just("image"),
            Just("privileged"),
            Just("network_mode"),
            Just("volumes"),
            Just("networks"),
            Just("labels"),
            Just("logging"),
            Just("deploy"),
            Just("ipc"),
            Just("pid"),
            Just("cgroup"),
            Just("extends"),
            Just("links"),
            Just("secrets"),
            Just("configs"),
            Just("environment"),
            Just("command"),
            Just("restart"),
            Just("ports"),
            Just("cpus"),
            Just("mem_limit"),
            Just("cpu_quota"),
            Just("driver"),
            Just("resources"),
            Just("limits"),
            Just("type"),
            Just("source"),
            Just("target"),
            Just("external"),
            Just("name"),
            Just("content"),
            Just("x-extra"),
            Just("pull_policy"),
        ]
        .prop_map(str::to_owned),
        "[a-z_.-]{1,6}",
        "\\PC{1,4}",
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            proptest::collection::vec((key(), inner), 0..4).prop_map(|kv| {
                Value::Mapping(kv.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
            }),
        ]
    })
}

/// A compose document: services with an image (mostly) and a few keys,
/// and top-level volumes/networks/secrets/configs.
fn document() -> impl Strategy<Value = String> {
    let image = prop_oneof![
        Just("alice/web:1".to_owned()),
        Just("localhost:5000/b@sha256:1111111111111111111111111111111111111111111111111111111111111111".to_owned()),
        "[a-z0-9./:@-]{1,12}",
    ];
    let service = (
        prop_oneof!["web|db|a-b|x.y", "\\PC{1,4}"],
        proptest::option::weighted(0.9, image),
        proptest::collection::vec((key(), value()), 0..4),
    );
    let top = proptest::collection::vec(
        (
            prop_oneof![
                Just("volumes"),
                Just("networks"),
                Just("secrets"),
                Just("configs"),
                Just("x-a"),
                Just("name")
            ],
            value(),
        ),
        0..3,
    );
    (proptest::collection::vec(service, 1..4), top).prop_map(|(services, top)| {
        let mut svcs = Mapping::new();
        for (name, image, keys) in services {
            let mut svc = Mapping::new();
            if let Some(image) = image {
                svc.insert("image".into(), image.into());
            }
            for (k, v) in keys {
                if k != "image" {
                    svc.insert(k.into(), v);
                }
            }
            svcs.insert(name.into(), Value::Mapping(svc));
        }
        let mut doc = Mapping::new();
        doc.insert("services".into(), Value::Mapping(svcs));
        for (k, v) in top {
            doc.insert(k.into(), v);
        }
        serde_yaml_ng::to_string(&doc).unwrap()
    })
}

/// Documents that mostly pass the policy (keys it leaves to compose, with
/// any values), so that rendering is exercised on odd strings and numbers.
fn benign_document() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("environment"),
        Just("command"),
        Just("restart"),
        Just("x-extra"),
        Just("healthcheck"),
        Just("ports"),
        Just("cpus"),
        Just("mem_limit"),
        Just("cpu_quota"),
        Just("entrypoint"),
        Just("user"),
        Just("working_dir"),
    ];
    let service = (
        "[a-z][a-z0-9_.-]{0,5}",
        proptest::collection::vec((key, value()), 0..4),
    );
    proptest::collection::vec(service, 1..3).prop_map(|services| {
        let mut svcs = Mapping::new();
        for (name, keys) in services {
            let mut svc = Mapping::new();
            svc.insert("image".into(), "alice/web:1".into());
            for (k, v) in keys {
                svc.insert(k.into(), v);
            }
            svcs.insert(name.into(), Value::Mapping(svc));
        }
        let mut doc = Mapping::new();
        doc.insert("services".into(), Value::Mapping(svcs));
        serde_yaml_ng::to_string(&doc).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(support::cases(256)))]

    #[test]
    fn benign_compose_files(yaml in benign_document()) {
        check::check(yaml.as_bytes());
    }

    #[test]
    fn generated_compose_files(yaml in document()) {
        check::check(yaml.as_bytes());
    }

    #[test]
    fn any_text(s in "\\PC{0,80}") {
        check::check(s.as_bytes());
    }
}
