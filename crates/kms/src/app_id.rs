//! The app id: what every per-app key is bound to.

use crate::ParseError;
use std::fmt;
use std::str::FromStr;

/// An app's id: 20 bytes, written as 40 hex characters.
///
/// It is normally the first 20 bytes of the app's compose hash (or a pinned
/// value of the same shape). dstack's KMS accepts exactly 20 bytes, and the
/// signed message embeds the raw bytes, so `0xAB..` and `ab..` are the same
/// app: keys and signatures depend on the bytes, never on the spelling.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId([u8; 20]);

impl AppId {
    /// The length in bytes.
    pub const LEN: usize = 20;

    /// An app id from its bytes.
    pub fn from_bytes(bytes: [u8; 20]) -> Self {
        Self(bytes)
    }

    /// Reads an app id from hex (40 characters, either case, optional `0x`).
    pub fn from_hex(text: &str) -> Result<Self, ParseError> {
        const WHAT: &str = "app id";
        let t = text.trim();
        let t = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        let bytes = hex::decode(t).map_err(|_| ParseError::NotHex { what: WHAT })?;
        let bytes: [u8; 20] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| ParseError::WrongLength {
                what: WHAT,
                got: bytes.len(),
                expected: "20 (40 hex characters)",
            })?;
        Ok(Self(bytes))
    }

    /// The 20 bytes.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// Lowercase hex, no prefix.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for AppId {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s)
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppId({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spelling_does_not_matter() {
        let a = AppId::from_hex("0xABCDEF0123456789abcdef0123456789ABCDEF01").unwrap();
        let b = AppId::from_hex(" abcdef0123456789abcdef0123456789abcdef01\n").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_hex(), "abcdef0123456789abcdef0123456789abcdef01");
        assert_eq!(a.to_string().parse::<AppId>().unwrap(), a);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            AppId::from_hex("zz"),
            Err(ParseError::NotHex { what: "app id" })
        );
        assert!(matches!(
            AppId::from_hex(&"ab".repeat(32)),
            Err(ParseError::WrongLength { got: 32, .. })
        ));
        assert!(AppId::from_hex("").is_err());
    }
}
