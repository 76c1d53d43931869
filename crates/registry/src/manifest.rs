//! Manifests: OCI and Docker v2 image manifests, image indexes / manifest
//! lists, and [`Platform`] selection.
//!
//! Small serde types rather than `oci-spec`'s: Berth must accept the Docker
//! v2 media types next to the OCI ones, keeps the exact bytes for digest
//! verification, and needs only descriptors, so a few fields suffice.

use crate::error::{Category, PullError};
use crate::reference::Digest;
use serde::Deserialize;
use std::fmt;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The `Accept` header for manifest requests.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";
/// Largest manifest accepted (the distribution spec suggests 4 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
/// Most layers of an image pulled: the Docker engine's layer store chains at
/// most 125 (`maxLayerDepth` in moby's `layer/layer_store.go`: the 127
/// lower directories of some storage drivers, less the two of a container's
/// read-write layer), so an image of more cannot run. A manifest of 25,000
/// layers (it fits in [`MAX_MANIFEST_BYTES`]) kept a boot busy for minutes
/// before the engine refused it.
pub const MAX_LAYERS: usize = 125;

/// A content descriptor.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(default)]
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Platform, for entries of an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// The config blob.
    pub config: Descriptor,
    /// The layers, base first.
    pub layers: Vec<Descriptor>,
}

impl ImageManifest {
    /// Refuses an image of more layers than [`MAX_LAYERS`], naming `image`:
    /// checked when the manifest is read, before any blob is fetched.
    pub fn check_layer_count(&self, image: &str) -> Result<(), PullError> {
        if self.layers.len() <= MAX_LAYERS {
            return Ok(());
        }
        Err(PullError::new(
            Category::RegistryError,
            format!(
                "{image} has {} layers; the Docker engine runs images of at most {MAX_LAYERS}, so nothing of it was fetched",
                self.layers.len()
            ),
        )
        .hint("rebuild the image with fewer layers (fewer RUN/COPY steps, or a multi-stage build that copies the result into one layer)"))
    }
}

/// An image index or manifest list.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ImageIndex {
    /// One manifest per platform (and possibly attestations).
    pub manifests: Vec<Descriptor>,
}

/// A parsed manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Manifest {
    /// A single-platform image.
    Image(ImageManifest),
    /// A multi-platform index.
    Index(ImageIndex),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<serde::de::IgnoredAny>,
    layers: Option<serde::de::IgnoredAny>,
}

impl Manifest {
    /// Parses `bytes`, using `content_type` (the response's) or the body's own
    /// `mediaType`, or its shape, to tell an index from an image manifest.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, PullError> {
        let bad = |what: &str| {
            PullError::new(
                Category::RegistryError,
                format!("the registry sent a manifest that {what}"),
            )
        };
        let probe: Probe = serde_json::from_slice(bytes).map_err(|_| bad("is not valid JSON"))?;
        if probe.schema_version == Some(1) {
            return Err(PullError::new(
                Category::RegistryError,
                "the image uses the deprecated Docker schema 1 manifest, which Berth does not pull",
            )
            .hint("push the image again with a current Docker or skopeo (schema 2 / OCI)"));
        }
        let media = probe
            .media_type
            .as_deref()
            .or(content_type.map(|c| c.split(';').next().unwrap_or(c).trim()))
            .unwrap_or("");
        let is_index = match media {
            OCI_INDEX | DOCKER_MANIFEST_LIST => true,
            OCI_MANIFEST | DOCKER_MANIFEST => false,
            _ => probe.manifests.is_some() && probe.layers.is_none(),
        };
        if is_index {
            serde_json::from_slice(bytes)
                .map(Manifest::Index)
                .map_err(|_| bad("is not a valid image index"))
        } else {
            serde_json::from_slice(bytes)
                .map(Manifest::Image)
                .map_err(|_| bad("is not a valid image manifest"))
        }
    }
}

/// An `os/architecture[/variant]` platform.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `linux`, …
    pub os: String,
    /// `amd64`, `arm64`, …
    pub architecture: String,
    /// `v8`, `v7`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this machine, in OCI words.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            other => other,
        };
        Self {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self, PullError> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Self {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(Self {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(variant.to_string()),
            }),
            _ => Err(PullError::config(format!(
                "platform `{s}`: expected os/arch or os/arch/variant"
            ))
            .hint("for example linux/amd64 or linux/arm64/v8")),
        }
    }

    /// Whether an index entry for `candidate` serves this platform.
    fn matches(&self, candidate: &Platform) -> bool {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return false;
        }
        match (&self.variant, &candidate.variant) {
            (None, _) => true,
            (Some(want), Some(have)) => want == have,
            // arm64 images usually omit the default variant v8.
            (Some(want), None) => self.architecture == "arm64" && want == "v8",
        }
    }

    /// The entry of `index` for this platform.
    pub fn select<'a>(&self, index: &'a ImageIndex) -> Option<&'a Descriptor> {
        let candidates = index.manifests.iter().filter(|d| {
            d.platform.as_ref().is_some_and(|p| self.matches(p))
                && matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | "")
        });
        // Prefer an exact variant match, then the first.
        let all: Vec<_> = candidates.collect();
        all.iter()
            .find(|d| d.platform.as_ref().and_then(|p| p.variant.as_ref()) == self.variant.as_ref())
            .or(all.first())
            .copied()
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn parses_both_kinds() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"c","digest":"{D1}","size":1}},"layers":[{{"mediaType":"l","digest":"{D2}","size":2}}]}}"#
        );
        let Manifest::Image(img) = Manifest::parse(m.as_bytes(), None).unwrap() else {
            panic!()
        };
        assert_eq!(img.layers[0].size, 2);
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{D2}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#
        );
        let Manifest::Index(index) = Manifest::parse(idx.as_bytes(), Some(OCI_INDEX)).unwrap()
        else {
            panic!()
        };
        let amd = Platform::parse("linux/amd64").unwrap();
        assert_eq!(amd.select(&index).unwrap().digest.to_string(), D1);
        let arm = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(arm.select(&index).unwrap().digest.to_string(), D2);
        assert!(
            Platform::parse("linux/s390x")
                .unwrap()
                .select(&index)
                .is_none()
        );
        assert!(
            Manifest::parse(br#"{"schemaVersion":1}"#, None)
                .unwrap_err()
                .message
                .contains("schema 1")
        );
        assert!(Platform::parse("linux").is_err());
    }
}
