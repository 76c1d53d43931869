//! `WWW-Authenticate` challenges under generated input: the fuzz target's
//! check (`fuzz/checks/www_authenticate.rs`: no panic on any value, and
//! parameters written per RFC 9110 read back exactly), and every saved
//! fuzz input. `BERTH_FUZZ_CASES` sets the number of cases (`make fuzz`).

#[path = "../../../fuzz/checks/www_authenticate.rs"]
mod check;
#[path = "../../../fuzz/checks/support.rs"]
mod support;

use proptest::prelude::*;

#[test]
fn saved_fuzz_inputs_pass() {
    support::replay(env!("CARGO_MANIFEST_DIR"), "www_authenticate", check::check);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(support::cases(1024)))]

    #[test]
    fn raw_header_values(
        v in "(Bearer|Basic|bearer|Negotiate)?[ ]?([a-zA-Z]{0,6}[ ]?=[ ]?(\"([^\"\\\\]|\\\\.){0,8}\"?|[^,\"]{0,8})[ ,]{0,3}){0,4}|\\PC{0,40}"
    ) {
        let mut data = vec![0u8];
        data.extend(v.into_bytes());
        check::check(&data);
    }

    #[test]
    fn written_parameters_read_back(
        mode in any::<u8>(),
        pairs in proptest::collection::vec(("[a-zA-Z_-]{1,8}", "[ -~\t]{0,16}"), 0..6),
    ) {
        let mut data = vec![mode | 1];
        let joined: Vec<String> = pairs.into_iter().flat_map(|(k, v)| [k, v]).collect();
        data.extend(joined.join("\0").into_bytes());
        check::check(&data);
    }
}
