//! Manifests and indexes under generated input: the fuzz target's check
//! (`fuzz/checks/manifest.rs`) on manifest-shaped JSON with every content
//! type, and on every saved fuzz input. `BERTH_FUZZ_CASES` sets the number
//! of cases (`make fuzz`).

#[path = "../../../fuzz/checks/manifest.rs"]
mod check;
#[path = "../../../fuzz/checks/support.rs"]
mod support;

use proptest::prelude::*;
use serde_json::{Value, json};

#[test]
fn saved_fuzz_inputs_pass() {
    support::replay(env!("CARGO_MANIFEST_DIR"), "manifest", check::check);
}

fn descriptor() -> impl Strategy<Value = Value> {
    let digest = prop_oneof![
        "sha256:[0-9a-f]{64}",
        "sha512:[0-9a-f]{128}",
        "[a-z0-9]{0,7}:[0-9a-fA-F]{0,66}",
    ];
    let media = prop_oneof![
        Just("application/vnd.oci.image.manifest.v1+json".to_owned()),
        Just("application/vnd.docker.distribution.manifest.v2+json".to_owned()),
        Just(String::new()),
        "\\PC{0,6}",
    ];
    let platform = proptest::option::of((
        prop_oneof![Just("linux"), Just("windows"), Just("")],
        prop_oneof![Just("amd64"), Just("arm64"), Just("arm"), Just("s390x")],
        proptest::option::of(prop_oneof![Just("v8"), Just("v7"), Just("")]),
    ));
    (digest, media, any::<u64>(), platform, any::<u8>()).prop_map(|(d, m, size, p, drop)| {
        let mut v = json!({"mediaType": m, "digest": d, "size": size});
        if let Some((os, arch, variant)) = p {
            let mut pj = json!({"os": os, "architecture": arch});
            if let Some(var) = variant {
                pj["variant"] = json!(var);
            }
            v["platform"] = pj;
        }
        match drop % 8 {
            0 => v
                .as_object_mut()
                .unwrap()
                .remove("size")
                .map(|_| ())
                .unwrap_or(()),
            1 => v["size"] = json!(-1),
            _ => {}
        }
        v
    })
}

fn manifest() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(descriptor(), 0..5),
        descriptor(),
        0u8..6,
        proptest::option::of(0u32..3),
        any::<u8>(),
    )
        .prop_map(|(ds, config, shape, schema, selector)| {
            let mut doc = match shape {
                0 | 1 => json!({"config": config, "layers": ds}),
                2 | 3 => json!({"manifests": ds}),
                4 => json!({"config": config, "layers": ds, "manifests": []}),
                _ => json!({"layers": ds}),
            };
            if let Some(s) = schema {
                doc["schemaVersion"] = json!(s);
            }
            if shape == 1 {
                doc["mediaType"] = json!("application/vnd.oci.image.index.v1+json");
            }
            let mut out = vec![selector];
            out.extend(serde_json::to_vec(&doc).unwrap());
            out
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(support::cases(512)))]

    #[test]
    fn manifest_shaped_json(data in manifest()) {
        check::check(&data);
    }

    #[test]
    fn any_bytes(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        check::check(&data);
    }
}
