//! [`Failure`]: what the user sees when a command fails.

use std::fmt::Display;
use std::process::ExitCode;

/// Exit code for bad input or configuration.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code for an I/O problem on the user's machine.
pub const EXIT_IO: u8 = 1;

/// The process exit code of a failure category: 2 config, 3
/// credentials_rejected, 4 access_denied, 5 not_found, 6 rate_limited,
/// 7 unreachable, 8 registry_error, 9 integrity, 10 runtime,
/// 11 untrusted_image.
pub fn exit_code(category: registry::Category) -> u8 {
    // The codes are a contract with the node, which reads a boot agent's
    // exit code back: they live with the category in `contract`.
    category.exit_code()
}

/// The pull engine's hint in the `berth` CLI's terms (its flags).
pub fn pull_hint(hint: &registry::Hint) -> String {
    use registry::Hint as H;
    match hint {
        H::Text(t) => t.clone(),
        H::CheckNetwork => "check the registry address, the network and DNS; for a mirror or test \
             registry use --registry-endpoint, for a private CA --ca-cert"
            .into(),
        H::MapRegistry => "only the operator can map a registry to a loopback or private address \
             (--registry-endpoint REGISTRY=URL, or registry_endpoints in the sys-config); \
             use a registry on a public address"
            .into(),
        H::TrustCa => "the registry's TLS certificate is not trusted: pass its CA with --ca-cert \
             (or the sys-config CA list), or check the registry address"
            .into(),
        H::RaiseRetryBudget => "the registry (or something in front of it) is stalled or \
             overloaded: retry later, or raise the retry budget (--max-retry-time); check the \
             registry address and the network"
            .into(),
        H::FreeSpace => "free space on that disk (or pull into a store on a larger disk with \
             --store), then pull again: downloads already in the store's ingest/ folder are resumed"
            .into(),
        H::StoreWritable => {
            "check that the store directory (--store) is writable and the disk has room".into()
        }
        H::PickPlatform => {
            "pick a platform the image has with --platform, or push one for this platform".into()
        }
        _ => "check the registry, the image reference and the credentials".into(),
    }
}

/// One sentence saying what is wrong, a hint saying what to do, an exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub hint: Option<String>,
    pub code: u8,
}

impl Failure {
    /// A failure caused by the user's input or configuration (exit code 2).
    pub fn config(message: impl Display) -> Self {
        Self {
            message: message.to_string(),
            hint: None,
            code: EXIT_CONFIG,
        }
    }

    /// A failure to read or write a file (exit code 1).
    pub fn io(what: impl Display, err: &std::io::Error) -> Self {
        Self {
            message: format!("{what}: {}", io_reason(err)),
            hint: None,
            code: EXIT_IO,
        }
    }

    /// A failure already reported (for example as JSON on stdout).
    pub fn silent(code: u8) -> Self {
        Self {
            message: String::new(),
            hint: None,
            code,
        }
    }

    /// Adds the hint.
    pub fn hint(mut self, hint: impl Display) -> Self {
        self.hint = Some(hint.to_string());
        self
    }

    /// Prints the failure on stderr and returns its exit code.
    pub fn report(self) -> std::process::ExitCode {
        if self.message.is_empty() {
            return ExitCode::from(self.code);
        }
        eprintln!("error: {}", self.message);
        if let Some(hint) = self.hint {
            eprintln!("hint: {hint}");
        }
        ExitCode::from(self.code)
    }
}

/// `io::Error`'s text without the "(os error N)" noise.
fn io_reason(err: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match err.kind() {
        NotFound => "no such file or directory".into(),
        PermissionDenied => "permission denied".into(),
        AlreadyExists => "it already exists".into(),
        IsADirectory => "it is a directory".into(),
        _ => {
            let s = err.to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_lowercase(),
                None => s,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exit_codes_are_the_documented_ones() {
        let codes: Vec<_> = registry::Category::ALL
            .iter()
            .map(|c| (c.as_str(), super::exit_code(*c)))
            .collect();
        assert_eq!(
            codes,
            [
                ("config", 2),
                ("credentials_rejected", 3),
                ("access_denied", 4),
                ("not_found", 5),
                ("rate_limited", 6),
                ("unreachable", 7),
                ("registry_error", 8),
                ("integrity", 9),
                ("runtime", 10),
                ("untrusted_image", 11),
            ]
        );
    }
}
