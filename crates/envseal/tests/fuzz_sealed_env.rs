//! Opening sealed envs under generated input: the fuzz target's check
//! (`fuzz/checks/sealed_env.rs`) on raw blobs, on correctly encrypted
//! arbitrary plaintexts and on hex texts, and on every saved fuzz input.
//! `BERTH_FUZZ_CASES` sets the number of cases (`make fuzz`).

#[path = "../../../fuzz/checks/sealed_env.rs"]
mod check;
#[path = "../../../fuzz/checks/support.rs"]
mod support;

use proptest::prelude::*;

#[test]
fn saved_fuzz_inputs_pass() {
    support::replay(env!("CARGO_MANIFEST_DIR"), "sealed_env", check::check);
}

/// `{"env":[...]}`-like plaintexts, valid or slightly broken.
fn plaintext() -> impl Strategy<Value = Vec<u8>> {
    let entry = ("[A-Z_]{1,4}|\\PC{0,4}", "\\PC{0,12}");
    (
        proptest::collection::vec(entry, 0..5),
        0usize..4,
        any::<usize>(),
    )
        .prop_map(|(entries, shape, cut)| {
            let list: Vec<serde_json::Value> = entries
                .iter()
                .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
                .collect();
            let doc = match shape {
                0 => serde_json::json!({ "env": list }),
                1 => serde_json::json!({ "env": list, "extra": 1 }),
                2 => serde_json::json!({ "env": [list] }),
                _ => serde_json::json!(list),
            };
            let mut bytes = serde_json::to_vec(&doc).unwrap();
            if cut % 4 == 0 {
                bytes.truncate(cut / 4 % (bytes.len() + 1));
            }
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(support::cases(128)))]

    #[test]
    fn encrypted_plaintexts(p in plaintext()) {
        let mut data = vec![1u8];
        data.extend(p);
        check::check(&data);
    }

    #[test]
    fn raw_blobs_and_hex(mode in 0u8..3, data in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..120),
        "[ \t]{0,2}(0x|0X)?[0-9a-fA-F]{0,130}[ g\n]{0,2}".prop_map(String::into_bytes),
    ]) {
        let mut input = vec![if mode == 1 { 0 } else { mode }];
        input.extend(data);
        check::check(&input);
    }
}
