//! The serial log under generated input: the fuzz target's check
//! (`fuzz/checks/serial_log.rs`: one call writes one line, and no secret
//! of the env survives in any of its forms), and every saved fuzz input.
//! `BERTH_FUZZ_CASES` sets the number of cases (`make fuzz`).

#[path = "../../../fuzz/checks/serial_log.rs"]
mod check;
#[path = "../../../fuzz/checks/support.rs"]
mod support;

use proptest::prelude::*;

#[test]
fn saved_fuzz_inputs_pass() {
    support::replay(env!("CARGO_MANIFEST_DIR"), "serial_log", check::check);
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9]{1,12}",
        "[ -~]{1,16}",
        "[a-z\\\\%+\"/ \n\r\t\\x01]{1,12}",
        "\\PC{1,8}",
        "[\\x00-\\x1f\\x7f\u{85}\u{2028}\u{202e}a-c]{1,6}",
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[ -~]{0,10}", "[\\\\%+\"\n\\x1b a-z]{0,8}", "\\PC{0,6}"]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(support::cases(256)))]

    #[test]
    fn secrets_never_reach_the_line(
        mode in any::<u8>(),
        values in proptest::collection::vec(value(), 1..4),
        prefix in text(),
        suffix in text(),
    ) {
        // The check's input: mode, then NUL-separated values, prefix, suffix.
        let mut parts: Vec<String> = values.into_iter().map(|v| v.replace('\0', "")).collect();
        parts.push(prefix.replace('\0', ""));
        parts.push(suffix.replace('\0', ""));
        let mut data = vec![mode];
        data.extend(parts.join("\0").into_bytes());
        check::check(&data);
    }
}
