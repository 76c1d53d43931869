//! Image references under generated input: the fuzz target's check
//! (`fuzz/checks/image_reference.rs`) on reference-shaped text, and on
//! every saved fuzz input. `BERTH_FUZZ_CASES` sets the number of cases.

#[path = "../../../fuzz/checks/image_reference.rs"]
mod check;
#[path = "../../../fuzz/checks/support.rs"]
mod support;

use proptest::prelude::*;

#[test]
fn saved_fuzz_inputs_pass() {
    support::replay(env!("CARGO_MANIFEST_DIR"), "image_reference", check::check);
}

fn reference() -> impl Strategy<Value = String> {
    let domain = prop_oneof![
        Just(String::new()),
        "(localhost|[a-zA-Z0-9-]{1,8}(\\.[a-zA-Z0-9-]{1,5}){0,2}|docker\\.io|INDEX\\.docker\\.io|\\[::1\\])(:[0-9]{1,5})?/",
    ];
    let component = "[a-z0-9]{1,4}([._-]{1,2}[a-z0-9]{1,3}){0,2}|[ -~]{0,3}";
    let path = proptest::collection::vec(component, 1..4).prop_map(|c| c.join("/"));
    let tag = prop_oneof![
        Just(String::new()),
        ":[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}",
        ":[ -~]{0,4}"
    ];
    let digest = prop_oneof![
        Just(String::new()),
        "@sha256:[0-9a-f]{64}",
        "@sha512:[0-9a-f]{128}",
        "@[a-z0-9]{1,7}:[0-9a-fA-F]{0,66}",
    ];
    (domain, path, tag, digest).prop_map(|(d, p, t, g)| format!("{d}{p}{t}{g}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(support::cases(1024)))]

    #[test]
    fn reference_shaped_text(r in reference()) {
        check::check(r.as_bytes());
    }

    #[test]
    fn any_text(s in "\\PC{0,40}|[a-zA-Z0-9:/@._-]{0,80}") {
        check::check(s.as_bytes());
    }
}
