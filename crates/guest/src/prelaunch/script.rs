//! The pre-launch script users paste into Phala Cloud (the UI's pre-launch
//! script field, or `phala deploy --pre-launch-script FILE`): it fetches
//! the static `berth` binary, checks its pinned sha256, caches it on the
//! persistent disk and runs `berth guest prelaunch`; if the binary cannot
//! be had, the default flow runs. The text is `prelaunch.sh` next to this
//! file, with the URL, the pin and Berth's version filled in.

/// The template.
const TEMPLATE: &str = include_str!("prelaunch.sh");

/// Why a script cannot be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    /// The URL is not an `https://`, `http://` or `file://` URL of plain characters.
    #[error(
        "the agent's URL must start with https://, http:// or file:// and hold no quote, space or control character"
    )]
    Url,
    /// The pin is not 64 hexadecimal characters.
    #[error("the sha256 pin must be 64 hexadecimal characters")]
    Sha256,
}

/// The script for the agent at `url` whose sha256 is `sha256` (hex).
pub fn render(url: &str, sha256: &str) -> Result<String, ScriptError> {
    let scheme_ok = ["https://", "http://", "file://"]
        .iter()
        .any(|s| url.starts_with(s) && url.len() > s.len());
    let chars_ok = url
        .chars()
        .all(|c| c.is_ascii_graphic() && !matches!(c, '\'' | '"' | '`' | '\\' | '$'));
    if !scheme_ok || !chars_ok {
        return Err(ScriptError::Url);
    }
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ScriptError::Sha256);
    }
    Ok(TEMPLATE
        .replace("@URL@", url)
        .replace("@SHA256@", &sha256.to_ascii_lowercase())
        .replace("@VERSION@", env!("CARGO_PKG_VERSION")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn fills_in_the_url_and_the_pin() {
        let s = render("https://example.com/berth", &PIN.to_uppercase()).unwrap();
        assert!(s.contains("local url='https://example.com/berth' pin='0011"));

        assert!(!s.contains("@SHA256@") && !s.contains("@VERSION@"));
    }

    #[test]
    fn refuses_what_would_break_out_of_its_quotes() {
        assert_eq!(render("https://x/'; rm -rf /", PIN), Err(ScriptError::Url));
        assert_eq!(render("ftp://x/b", PIN), Err(ScriptError::Url));
        assert_eq!(render("https://x/$(id)", PIN), Err(ScriptError::Url));
        assert_eq!(render("https://x/b", "abc"), Err(ScriptError::Sha256));
    }
}
