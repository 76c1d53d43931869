//! A CVM's name: the one grammar the control plane checks at provisioning
//! (`cloud::appcompose::validate_name`) and tells front ends
//! (`GET /berth/rules`: the console's hint and its error use [`RULE`] and
//! check [`PATTERN`] with [`MIN_LEN`] and [`MAX_LEN`]). Hostname rules, so
//! a name can label a host.

/// Shortest name, in bytes.
pub const MIN_LEN: usize = 5;

/// Longest name, in bytes.
pub const MAX_LEN: usize = 63;

/// The grammar as a regular expression (ECMAScript and Rust syntax alike),
/// checked together with [`MIN_LEN`] and [`MAX_LEN`].
pub const PATTERN: &str = "^[A-Za-z][A-Za-z0-9-]*[A-Za-z0-9]$";

/// The rule in words, as messages say it ("use RULE").
pub const RULE: &str =
    "5 to 63 letters, digits or `-`, starting with a letter and not ending with `-`";

/// Whether `name` is a valid CVM name: [`MIN_LEN`] to [`MAX_LEN`] ASCII
/// letters, digits or `-`, starting with a letter, not ending with `-`.
pub fn is_valid(name: &str) -> bool {
    (MIN_LEN..=MAX_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar() {
        for ok in ["abcde", "my-app-1", "A1234", &"a".repeat(63)] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in [
            "abcd",
            "1abcd",
            "-abcd",
            "abcd-",
            "ab_cd",
            "ab.cd",
            "abcdé",
            &"a".repeat(64),
        ] {
            assert!(!is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn the_words_and_the_pattern_say_the_same_bounds() {
        assert!(
            RULE.starts_with(&format!("{MIN_LEN} to {MAX_LEN} ")),
            "{RULE}"
        );
        assert!(PATTERN.starts_with("^[A-Za-z]") && PATTERN.ends_with("[A-Za-z0-9]$"));
    }
}
