//! [`ImageReference`] and [`Digest`]: what an image name in a compose file
//! means, normalised the way the Docker CLI normalises it.
//!
//! The grammar is docker/distribution's `reference` package
//! (`name[:tag][@digest]`, a domain is the first path component if it
//! contains `.` or `:`, is `localhost`, or has an uppercase letter), plus
//! its `ParseNormalizedNamed` rules (`busybox` is `docker.io/library/busybox`,
//! the tag defaults to `latest` when there is no digest).
//!
//! Hand-written rather than taken from a crate, on purpose: `oci-spec`'s
//! `distribution::Reference` pulls `regex`, `derive_builder`, `getset`,
//! `strum` and `quickcheck` into the guest image, does not treat
//! `registry-1.docker.io` as Docker Hub, and resolves Docker Hub to
//! `index.docker.io` rather than the API host `registry-1.docker.io`;
//! `docker_credential` has no reference parser at all. The grammar is small
//! enough to state exactly in the functions below, each of which names the
//! rule it checks.
//!
//! Deliberate deviations from Docker: the Docker Hub aliases
//! (`docker.io`, `index.docker.io`, `registry-1.docker.io`) are recognised
//! case-insensitively, and the only digest algorithms accepted are the two
//! that the OCI image spec registers, `sha256` and `sha512`.

use std::fmt;
use std::str::FromStr;

/// The normalised name of Docker Hub.
pub const DOCKER_HUB: &str = "docker.io";

/// The host that serves Docker Hub's registry API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";

/// Names that all mean Docker Hub.
const DOCKER_HUB_ALIASES: [&str; 3] = [DOCKER_HUB, "index.docker.io", DOCKER_HUB_API_HOST];

/// The tag used when a reference has neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";

/// Longest allowed repository name, registry included (`NameTotalLengthMax`).
pub const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Longest allowed tag.
const TAG_LENGTH_MAX: usize = 128;

/// A content digest's hash function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestAlgorithm {
    /// SHA-256, 64 hex characters; what every registry uses today.
    Sha256,
    /// SHA-512, 128 hex characters.
    Sha512,
}

impl DigestAlgorithm {
    /// The algorithm's name as written in a digest (`sha256`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    /// Number of hex characters in a digest of this algorithm.
    pub fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha512 => 128,
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A content digest such as `sha256:4c2d…`: an algorithm and its hash in
/// lowercase hex.
///
/// Invariant (checked by every constructor): the hex part has exactly
/// [`DigestAlgorithm::hex_len`] characters, all in `[0-9a-f]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    algorithm: DigestAlgorithm,
    /// The whole digest, `algorithm:hex`, so that it can be lent as `&str`.
    text: String,
}

impl Digest {
    /// A digest from an algorithm and its hex-encoded hash.
    pub fn new(algorithm: DigestAlgorithm, hex: &str) -> Result<Self, DigestError> {
        if hex.len() != algorithm.hex_len() {
            return Err(DigestError::WrongLength {
                algorithm,
                expected: algorithm.hex_len(),
                found: hex.len(),
            });
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::NotLowercaseHex { algorithm });
        }
        Ok(Self {
            algorithm,
            text: format!("{algorithm}:{hex}"),
        })
    }

    /// A SHA-256 digest from its hash in hex; shorthand for
    /// `Digest::new(DigestAlgorithm::Sha256, hex)`.
    pub fn sha256(hex: &str) -> Result<Self, DigestError> {
        Self::new(DigestAlgorithm::Sha256, hex)
    }

    /// The hash function.
    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// The hash in lowercase hex, without the `algorithm:` prefix.
    pub fn hex(&self) -> &str {
        &self.text[self.algorithm.name().len() + 1..]
    }

    /// The whole digest, `algorithm:hex`.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algorithm, hex) = s.split_once(':').ok_or(DigestError::MissingAlgorithm)?;
        let algorithm = match algorithm {
            "sha256" => DigestAlgorithm::Sha256,
            "sha512" => DigestAlgorithm::Sha512,
            other => {
                return Err(DigestError::UnsupportedAlgorithm {
                    algorithm: other.to_owned(),
                });
            }
        };
        Self::new(algorithm, hex)
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> Self {
        d.text
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.text)
    }
}

/// Why a string is not a valid [`Digest`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `algorithm:` prefix.
    #[error(
        "a digest must start with its algorithm, as in `sha256:` followed by 64 lowercase hex characters"
    )]
    MissingAlgorithm,
    /// An algorithm other than sha256 or sha512.
    #[error("digest algorithm `{algorithm}` is not supported; use `sha256` (or `sha512`)")]
    UnsupportedAlgorithm {
        /// The algorithm as written.
        algorithm: String,
    },
    /// The hex part has the wrong length for its algorithm.
    #[error("a {algorithm} digest has {expected} hex characters, this one has {found}")]
    WrongLength {
        /// The digest's algorithm.
        algorithm: DigestAlgorithm,
        /// Length the algorithm requires.
        expected: usize,
        /// Length found.
        found: usize,
    },
    /// The hex part has characters outside `[0-9a-f]`.
    #[error("a {algorithm} digest must be written in lowercase hex (0-9, a-f)")]
    NotLowercaseHex {
        /// The digest's algorithm.
        algorithm: DigestAlgorithm,
    },
}

/// A parsed, normalised image reference such as
/// `docker.io/library/busybox:latest` or `ghcr.io/owner/app@sha256:…`.
///
/// Invariants: the registry is a valid host (Docker Hub always spelled
/// `docker.io`), the repository is a valid lowercase path (one-word Docker
/// Hub names prefixed with `library/`), and at least one of tag and digest
/// is present (the tag defaults to `latest` when there is no digest).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageReference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageReference {
    /// Parses and normalises `reference`; same as `reference.parse()`.
    pub fn parse(reference: &str) -> Result<Self, ReferenceError> {
        reference.parse()
    }

    /// The normalised registry name, e.g. `docker.io`, `ghcr.io`,
    /// `localhost:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if the reference has one (always, unless it names a digest
    /// only).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The host (and port) that serves the registry's HTTP API:
    /// `registry-1.docker.io` for Docker Hub, the registry itself otherwise.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    /// What goes after `/manifests/` in the registry API: the digest if the
    /// reference pins one, else the tag.
    pub fn reference_for_manifest(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.as_str(),
            (None, Some(tag)) => tag,
            (None, None) => unreachable!("an ImageReference always has a tag or a digest"),
        }
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageReference {
    type Err = ReferenceError;

    fn from_str(reference: &str) -> Result<Self, Self::Err> {
        let err = |kind| ReferenceError {
            reference: reference.to_owned(),
            kind,
        };
        if reference.is_empty() {
            return Err(err(ReferenceErrorKind::Empty));
        }

        // name [":" tag] ["@" digest]: neither name nor tag contains '@'.
        let (name_and_tag, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                let digest = digest.parse::<Digest>().map_err(|source| {
                    err(ReferenceErrorKind::Digest {
                        digest: digest.to_owned(),
                        source,
                    })
                })?;
                (rest, Some(digest))
            }
            None => (reference, None),
        };

        // The tag follows the last ':' that comes after the last '/', so a
        // registry port (`localhost:5000/app`) is not mistaken for a tag.
        let last_slash = name_and_tag.rfind('/');
        let (name, tag) = match name_and_tag.rfind(':') {
            Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
                (&name_and_tag[..colon], Some(&name_and_tag[colon + 1..]))
            }
            _ => (name_and_tag, None),
        };
        if let Some(tag) = tag
            && !is_valid_tag(tag)
        {
            return Err(err(ReferenceErrorKind::Tag {
                tag: tag.to_owned(),
            }));
        }
        if name.is_empty() {
            return Err(err(ReferenceErrorKind::Empty));
        }

        // splitDockerDomain: the first component is a domain if it contains
        // '.' or ':', is "localhost", or is not all lowercase.
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first, rest)
            }
            _ => (DOCKER_HUB, name),
        };
        if !is_valid_domain(domain) {
            return Err(err(ReferenceErrorKind::Registry {
                registry: domain.to_owned(),
            }));
        }
        for component in path.split('/') {
            if !is_valid_path_component(component) {
                return Err(err(ReferenceErrorKind::PathComponent {
                    component: component.to_owned(),
                }));
            }
        }
        // A bare 64-hex string is an image ID, not a name (Docker refuses it).
        if domain == DOCKER_HUB
            && path.len() == 64
            && path.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(err(ReferenceErrorKind::ImageId));
        }

        let registry = normalize_docker_hub(domain).to_owned();
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        let length = registry.len() + 1 + repository.len();
        if length > NAME_TOTAL_LENGTH_MAX {
            return Err(err(ReferenceErrorKind::NameTooLong { length }));
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_owned()),
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

/// Why a string is not a valid [`ImageReference`]: the reference as written
/// plus what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image reference `{reference}` is not valid: {kind}")]
pub struct ReferenceError {
    /// The reference as written.
    pub reference: String,
    /// Which part is wrong.
    pub kind: ReferenceErrorKind,
}

/// Which part of an image reference is wrong, and what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceErrorKind {
    /// Nothing to parse, or only a tag/digest with no name.
    #[error("it has no repository name; write one like `nginx:1.27` or `ghcr.io/owner/app:tag`")]
    Empty,
    /// The registry host does not follow the host grammar.
    #[error(
        "registry `{registry}` is not a host name; a registry is letters, digits, `-` and `.` with an optional `:PORT`, like `ghcr.io` or `localhost:5000`"
    )]
    Registry {
        /// The registry part as written.
        registry: String,
    },
    /// A repository path component does not follow the path grammar.
    #[error(
        "repository path component `{component}` is not valid; components are lowercase letters and digits separated by `.`, `_`, `__` or dashes, like `my-app`"
    )]
    PathComponent {
        /// The component as written (may be empty).
        component: String,
    },
    /// The tag does not follow the tag grammar.
    #[error(
        "tag `{tag}` is not valid; a tag is 1 to 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`, like `1.27-alpine`"
    )]
    Tag {
        /// The tag as written.
        tag: String,
    },
    /// The digest does not parse.
    #[error(
        "digest `{digest}` is not valid ({source}); write `@sha256:` followed by 64 lowercase hex characters"
    )]
    Digest {
        /// The digest as written.
        digest: String,
        /// What is wrong with it.
        source: DigestError,
    },
    /// The name is a 64-character hex image ID.
    #[error(
        "it looks like a 64-character image ID, not a repository name; refer to content as `name@sha256:<hex>`"
    )]
    ImageId,
    /// Registry plus repository is longer than 255 characters.
    #[error("its normalised name is {length} characters long, more than the 255 allowed")]
    NameTooLong {
        /// Length of `registry/repository`.
        length: usize,
    },
}

/// Normalises a registry name as written by a user or a config file:
/// strips an `http(s)://` scheme and any path (`https://index.docker.io/v1/`
/// becomes `index.docker.io`), then spells every Docker Hub alias
/// `docker.io`. Returns `None` if what is left is not a valid host.
pub fn normalize_registry(input: &str) -> Option<String> {
    let without_scheme = ["https://", "http://"]
        .iter()
        .find_map(|scheme| input.strip_prefix(scheme))
        .unwrap_or(input);
    let host = without_scheme
        .split_once('/')
        .map_or(without_scheme, |(host, _)| host);
    is_valid_domain(host).then(|| normalize_docker_hub(host).to_owned())
}

/// Whether two normalised registry names are the same registry (host names
/// compare case-insensitively).
pub fn same_registry(a: &str, b: &str) -> bool {
    normalize_docker_hub(a).eq_ignore_ascii_case(normalize_docker_hub(b))
}

/// `docker.io` for any Docker Hub alias, `host` unchanged otherwise.
fn normalize_docker_hub(host: &str) -> &str {
    if DOCKER_HUB_ALIASES
        .iter()
        .any(|alias| host.eq_ignore_ascii_case(alias))
    {
        DOCKER_HUB
    } else {
        host
    }
}

/// `domain := host [':' port-number]`, `port-number := [0-9]+`,
/// `host := domain-name | IPv4address | '[' IPv6address ']'`.
pub(crate) fn is_valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        // '[' IPv6address ']' [':' port]
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.is_empty()
            || !v6.contains(':')
            || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
        {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return false,
            },
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(domain), None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    // domain-name := domain-component ('.' domain-component)*; an IPv4
    // address is a special case of it.
    host.is_none_or(|host| host.split('.').all(is_valid_domain_component))
}

/// `domain-component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`.
fn is_valid_domain_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        }
        _ => false,
    }
}

/// `path-component := alpha-numeric (separator alpha-numeric)*`,
/// `alpha-numeric := [a-z0-9]+`, `separator := [_.] | '__' | '-'+`.
fn is_valid_path_component(component: &str) -> bool {
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let mut i = 0;
    loop {
        // alpha-numeric run
        let start = i;
        while i < bytes.len() && is_alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        // separator
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if bytes.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// `tag := [\w][\w.-]{0,127}`.
fn is_valid_tag(tag: &str) -> bool {
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            bytes.len() <= TAG_LENGTH_MAX
                && is_word(*first)
                && rest.iter().all(|&b| is_word(b) || b == b'.' || b == b'-')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEX64: &str = "4c2d4b6e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c";

    fn parse(s: &str) -> ImageReference {
        s.parse()
            .unwrap_or_else(|e| panic!("`{s}` should parse: {e}"))
    }

    fn kind(s: &str) -> ReferenceErrorKind {
        match s.parse::<ImageReference>() {
            Ok(r) => panic!("`{s}` should not parse, got {r}"),
            Err(e) => {
                assert_eq!(e.reference, s);
                e.kind
            }
        }
    }

    /// Parses `input` and checks every accessor and the normalised form.
    fn check(input: &str, registry: &str, repository: &str, tag: Option<&str>, display: &str) {
        let r = parse(input);
        assert_eq!(r.registry(), registry, "{input}");
        assert_eq!(r.repository(), repository, "{input}");
        assert_eq!(r.tag(), tag, "{input}");
        assert_eq!(r.digest().is_some(), display.contains('@'), "{input}");
        assert_eq!(r.to_string(), display, "{input}");
        assert_eq!(parse(display), r, "{input}");
    }

    #[test]
    fn parses_and_normalises() {
        let latest = Some("latest");
        check(
            "busybox",
            "docker.io",
            "library/busybox",
            latest,
            "docker.io/library/busybox:latest",
        );
        check(
            "busybox:1.36",
            "docker.io",
            "library/busybox",
            Some("1.36"),
            "docker.io/library/busybox:1.36",
        );
        check(
            "user/app",
            "docker.io",
            "user/app",
            latest,
            "docker.io/user/app:latest",
        );
        check(
            "docker.io/busybox",
            "docker.io",
            "library/busybox",
            latest,
            "docker.io/library/busybox:latest",
        );
        check(
            "index.docker.io/busybox",
            "docker.io",
            "library/busybox",
            latest,
            "docker.io/library/busybox:latest",
        );
        check(
            "registry-1.docker.io/user/app:v1",
            "docker.io",
            "user/app",
            Some("v1"),
            "docker.io/user/app:v1",
        );
        check(
            "Docker.IO/user/app",
            "docker.io",
            "user/app",
            latest,
            "docker.io/user/app:latest",
        );
        check(
            "ghcr.io/owner/app:tag",
            "ghcr.io",
            "owner/app",
            Some("tag"),
            "ghcr.io/owner/app:tag",
        );
        check(
            "ghcr.io/app",
            "ghcr.io",
            "app",
            latest,
            "ghcr.io/app:latest",
        );
        check(
            "localhost/app",
            "localhost",
            "app",
            latest,
            "localhost/app:latest",
        );
        check(
            "localhost:5000/a/b/c:t",
            "localhost:5000",
            "a/b/c",
            Some("t"),
            "localhost:5000/a/b/c:t",
        );
        check(
            "127.0.0.1:5000/app:1",
            "127.0.0.1:5000",
            "app",
            Some("1"),
            "127.0.0.1:5000/app:1",
        );
        check(
            "[::1]:5000/app",
            "[::1]:5000",
            "app",
            latest,
            "[::1]:5000/app:latest",
        );
        // An uppercase first component is a registry, as in docker/distribution.
        check("Foo/bar", "Foo", "bar", latest, "Foo/bar:latest");
        // A one-word name with a port-like suffix is a name and a tag.
        check(
            "test.com:5000",
            "docker.io",
            "library/test.com",
            Some("5000"),
            "docker.io/library/test.com:5000",
        );
        check(
            "localhost:5000",
            "docker.io",
            "library/localhost",
            Some("5000"),
            "docker.io/library/localhost:5000",
        );
        check(
            "lowercase:Uppercase",
            "docker.io",
            "library/lowercase",
            Some("Uppercase"),
            "docker.io/library/lowercase:Uppercase",
        );
        check(
            "x/a__b.c---d_e",
            "docker.io",
            "x/a__b.c---d_e",
            latest,
            "docker.io/x/a__b.c---d_e:latest",
        );

        let digest = format!("sha256:{HEX64}");
        check(
            &format!("busybox@{digest}"),
            "docker.io",
            "library/busybox",
            None,
            &format!("docker.io/library/busybox@{digest}"),
        );
        check(
            &format!("ghcr.io/o/a:v2@{digest}"),
            "ghcr.io",
            "o/a",
            Some("v2"),
            &format!("ghcr.io/o/a:v2@{digest}"),
        );
        check(
            &format!("localhost:5000/a@{digest}"),
            "localhost:5000",
            "a",
            None,
            &format!("localhost:5000/a@{digest}"),
        );
    }

    #[test]
    fn api_host_and_manifest_reference() {
        let r = parse("busybox");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.reference_for_manifest(), "latest");
        let r = parse("ghcr.io/o/a:v1");
        assert_eq!(r.api_host(), "ghcr.io");
        assert_eq!(r.reference_for_manifest(), "v1");
        let r = parse(&format!("ghcr.io/o/a:v1@sha256:{HEX64}"));
        assert_eq!(r.reference_for_manifest(), format!("sha256:{HEX64}"));
        assert_eq!(r.digest().unwrap().hex(), HEX64);
        let r = parse("localhost:5000/a");
        assert_eq!(r.api_host(), "localhost:5000");
    }

    #[test]
    fn rejects_invalid_references() {
        assert_eq!(kind(""), ReferenceErrorKind::Empty);
        assert_eq!(kind(":tag"), ReferenceErrorKind::Empty);
        assert!(
            matches!(kind("Busybox"), ReferenceErrorKind::PathComponent { component } if component == "Busybox")
        );
        assert!(
            matches!(kind("ghcr.io/Owner/app"), ReferenceErrorKind::PathComponent { component } if component == "Owner")
        );
        assert!(
            matches!(kind("ghcr.io/owner//app"), ReferenceErrorKind::PathComponent { component } if component.is_empty())
        );
        assert!(matches!(
            kind("ghcr.io/owner/app/"),
            ReferenceErrorKind::PathComponent { .. }
        ));
        assert!(matches!(
            kind("ghcr.io/-app"),
            ReferenceErrorKind::PathComponent { .. }
        ));
        assert!(matches!(
            kind("ghcr.io/app-"),
            ReferenceErrorKind::PathComponent { .. }
        ));
        assert!(matches!(
            kind("ghcr.io/a___b"),
            ReferenceErrorKind::PathComponent { .. }
        ));
        assert!(matches!(
            kind("ghcr.io/a..b"),
            ReferenceErrorKind::PathComponent { .. }
        ));
        assert!(matches!(
            kind("ghcr.io/a b"),
            ReferenceErrorKind::PathComponent { .. }
        ));
        assert!(
            matches!(kind("-ghcr.io/app"), ReferenceErrorKind::Registry { registry } if registry == "-ghcr.io")
        );
        assert!(matches!(
            kind("ghcr..io/app"),
            ReferenceErrorKind::Registry { .. }
        ));
        assert!(matches!(
            kind("localhost:port/app"),
            ReferenceErrorKind::Registry { .. }
        ));
        assert!(matches!(
            kind("localhost:/app"),
            ReferenceErrorKind::Registry { .. }
        ));
        assert!(matches!(
            kind("[::1/app"),
            ReferenceErrorKind::Registry { .. }
        ));
        assert!(matches!(
            kind("[zz]:5000/app"),
            ReferenceErrorKind::Registry { .. }
        ));
        assert!(matches!(kind("busybox:"), ReferenceErrorKind::Tag { tag } if tag.is_empty()));
        assert!(matches!(kind("busybox:.x"), ReferenceErrorKind::Tag { .. }));
        assert!(matches!(kind("busybox:-x"), ReferenceErrorKind::Tag { .. }));
        assert!(matches!(
            kind("busybox:a+b"),
            ReferenceErrorKind::Tag { .. }
        ));
        assert!(matches!(
            kind(&format!("busybox:{}", "a".repeat(129))),
            ReferenceErrorKind::Tag { .. }
        ));
        parse(&format!("busybox:{}", "a".repeat(128)));
        assert!(matches!(
            kind("busybox@sha256:abc"),
            ReferenceErrorKind::Digest {
                source: DigestError::WrongLength { found: 3, .. },
                ..
            }
        ));
        assert!(matches!(
            kind(&format!("busybox@sha256:{}", HEX64.to_uppercase())),
            ReferenceErrorKind::Digest {
                source: DigestError::NotLowercaseHex { .. },
                ..
            }
        ));
        assert!(matches!(
            kind(&format!("busybox@md5:{HEX64}")),
            ReferenceErrorKind::Digest {
                source: DigestError::UnsupportedAlgorithm { .. },
                ..
            }
        ));
        assert!(matches!(
            kind("busybox@"),
            ReferenceErrorKind::Digest {
                source: DigestError::MissingAlgorithm,
                ..
            }
        ));
        assert!(matches!(
            kind(&format!("busybox@sha256:{HEX64}@sha256:{HEX64}")),
            ReferenceErrorKind::Digest { .. }
        ));
        assert_eq!(kind(HEX64), ReferenceErrorKind::ImageId);
    }

    #[test]
    fn name_length_limit_counts_the_normalised_name() {
        // docker.io/ + 245 = 255: fits.
        let ok = format!("a/{}", "b".repeat(243));
        assert_eq!(
            parse(&ok).to_string().len(),
            "docker.io/".len() + 245 + ":latest".len()
        );
        let too_long = format!("a/{}", "b".repeat(244));
        assert_eq!(
            kind(&too_long),
            ReferenceErrorKind::NameTooLong { length: 256 }
        );
        // library/ prefix counts too.
        assert_eq!(
            kind(&"b".repeat(240)),
            ReferenceErrorKind::NameTooLong { length: 258 }
        );
    }

    #[test]
    fn error_messages_are_one_sentence_naming_the_part() {
        let e = "ghcr.io/Owner/app".parse::<ImageReference>().unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("`ghcr.io/Owner/app`"), "{msg}");
        assert!(msg.contains("`Owner`"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        let e = "busybox@sha256:abc".parse::<ImageReference>().unwrap_err();
        assert!(
            e.to_string().contains("64 hex characters, this one has 3"),
            "{e}"
        );
    }

    #[test]
    fn digest_parse_display_and_serde() {
        let d: Digest = format!("sha256:{HEX64}").parse().unwrap();
        assert_eq!(d.algorithm(), DigestAlgorithm::Sha256);
        assert_eq!(d.hex(), HEX64);
        assert_eq!(d.to_string(), format!("sha256:{HEX64}"));
        assert_eq!(Digest::sha256(HEX64).unwrap(), d);
        let hex128 = HEX64.repeat(2);
        let d512: Digest = format!("sha512:{hex128}").parse().unwrap();
        assert_eq!(d512.algorithm(), DigestAlgorithm::Sha512);
        assert_eq!(d512.hex(), hex128);
        assert_eq!(
            format!("sha512:{HEX64}").parse::<Digest>(),
            Err(DigestError::WrongLength {
                algorithm: DigestAlgorithm::Sha512,
                expected: 128,
                found: 64
            })
        );
        assert_eq!(
            format!("sha384:{HEX64}").parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm {
                algorithm: "sha384".into()
            })
        );
        assert_eq!(
            format!("SHA256:{HEX64}").parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm {
                algorithm: "SHA256".into()
            })
        );
        assert_eq!(
            format!("sha256:{}", HEX64.to_uppercase()).parse::<Digest>(),
            Err(DigestError::NotLowercaseHex {
                algorithm: DigestAlgorithm::Sha256
            })
        );
        assert_eq!(HEX64.parse::<Digest>(), Err(DigestError::MissingAlgorithm));
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"sha256:{HEX64}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        let short = serde_json::from_str::<Digest>("\"sha256:00\"").unwrap_err();
        assert!(
            short
                .to_string()
                .contains("has 64 hex characters, this one has 2"),
            "{short}"
        );
        assert_eq!(format!("{d:?}"), format!("Digest(sha256:{HEX64})"));
    }

    #[test]
    fn normalize_registry_strips_scheme_and_path() {
        assert_eq!(
            normalize_registry("https://index.docker.io/v1/").as_deref(),
            Some("docker.io")
        );
        assert_eq!(
            normalize_registry("registry-1.docker.io").as_deref(),
            Some("docker.io")
        );
        assert_eq!(
            normalize_registry("http://localhost:5000").as_deref(),
            Some("localhost:5000")
        );
        assert_eq!(normalize_registry("ghcr.io").as_deref(), Some("ghcr.io"));
        assert_eq!(
            normalize_registry("ghcr.io/owner").as_deref(),
            Some("ghcr.io")
        );
        assert_eq!(normalize_registry(""), None);
        assert_eq!(normalize_registry("not a host"), None);
        assert!(same_registry("GHCR.io", "ghcr.io"));
        assert!(same_registry("index.docker.io", "docker.io"));
        assert!(!same_registry("ghcr.io", "docker.io"));
    }

    fn path_component() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,4}((\\.|_|__|-{1,3})[a-z0-9]{1,4}){0,2}"
    }

    fn domain() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("localhost".to_owned()),
            "[a-z0-9]([a-zA-Z0-9-]{0,6}[a-z0-9])?(\\.[a-zA-Z0-9]([a-z0-9-]{0,6}[a-z0-9])?){1,3}",
            "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
            "\\[[0-9a-f:]{0,6}:[0-9a-f]{0,4}\\]",
        ]
        .prop_flat_map(|host| {
            prop_oneof![Just(None), (0u32..70000).prop_map(Some)].prop_map(move |port| match port {
                Some(port) => format!("{host}:{port}"),
                None => host.clone(),
            })
        })
    }

    fn reference_string() -> impl Strategy<Value = String> {
        (
            prop::option::of(domain()),
            prop::collection::vec(path_component(), 1..4),
            prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
            prop::option::of(prop_oneof![
                "[0-9a-f]{64}".prop_map(|h| format!("sha256:{h}")),
                "[0-9a-f]{128}".prop_map(|h| format!("sha512:{h}"))
            ]),
        )
            .prop_map(|(domain, mut path, tag, digest)| {
                let mut s = String::new();
                if let Some(domain) = domain {
                    s.push_str(&domain);
                    s.push('/');
                } else {
                    // Without a registry, a first component with a '.' would
                    // be read as one: keep it a path component.
                    path[0] = path[0].replace('.', "-");
                }
                s.push_str(&path.join("/"));
                if let Some(tag) = tag {
                    s.push(':');
                    s.push_str(&tag);
                }
                if let Some(digest) = digest {
                    s.push('@');
                    s.push_str(&digest);
                }
                s
            })
    }

    proptest! {
        #[test]
        fn display_then_parse_is_identity(input in reference_string()) {
            let r: ImageReference = input.parse().map_err(|e| TestCaseError::fail(format!("{e}")))?;
            let shown = r.to_string();
            let again: ImageReference = shown.parse().map_err(|e| TestCaseError::fail(format!("{e}")))?;
            prop_assert_eq!(&again, &r);
            prop_assert_eq!(again.to_string(), shown);
        }

        #[test]
        fn parse_never_panics(input in "\\PC{0,80}") {
            let _ = input.parse::<ImageReference>();
        }
    }
}
