//! `.env` parsing under generated input: the fuzz target's check
//! (`fuzz/checks/dotenv.rs`) on `.env`-shaped text, and on every saved
//! fuzz input. `BERTH_FUZZ_CASES` sets the number of cases (`make fuzz`).

#[path = "../../../fuzz/checks/dotenv.rs"]
mod check;
#[path = "../../../fuzz/checks/support.rs"]
mod support;

use proptest::prelude::*;

#[test]
fn saved_fuzz_inputs_pass() {
    support::replay(env!("CARGO_MANIFEST_DIR"), "dotenv", check::check);
}

fn line() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        "[A-Za-z_][A-Za-z0-9_]{0,6}",
        "[ -~]{0,4}",
        "(export[ \t]+)?[A-Z]{1,3}"
    ];
    let value = prop_oneof![
        "[ -~]{0,12}",
        "'[^']{0,8}'?",
        "\"([^\"\\\\]|\\\\[nrt\"\\\\x])*\"?",
        "[a-z #\t]{0,10}",
        "\\PC{0,6}",
    ];
    prop_oneof![
        (key, "[ \t]{0,2}=[ \t]{0,2}", value).prop_map(|(k, eq, v)| format!("{k}{eq}{v}")),
        "#[ -~]{0,10}",
        "[ \t]{0,3}",
        "\\PC{0,10}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(support::cases(512)))]

    #[test]
    fn dotenv_text(lines in proptest::collection::vec(line(), 0..12), crlf in any::<bool>()) {
        let text = lines.join(if crlf { "\r\n" } else { "\n" });
        check::check(text.as_bytes());
    }

    #[test]
    fn any_bytes(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        check::check(&data);
    }
}
