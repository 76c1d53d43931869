//! The app's compose file: which images to pull, and the file handed to the
//! compose tool.

use crate::error::BootError;
use registry::{Category, ImageReference};
use serde_yaml_ng::Value;

/// One service's image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceImage {
    /// The service name.
    pub service: String,
    /// The image as written in the compose file.
    pub written: String,
    /// The parsed, normalised reference.
    pub reference: ImageReference,
}

/// A parsed compose file.
#[derive(Clone, Debug)]
pub struct ComposeFile {
    doc: Value,
    /// Every service's image, in file order.
    pub images: Vec<ServiceImage>,
}

impl ComposeFile {
    /// Parses the YAML and collects each service's image. A service with
    /// only `build:` is an error: a CVM pulls images, it does not build them.
    pub fn parse(yaml: &str) -> Result<Self, BootError> {
        let doc: Value = serde_yaml_ng::from_str(yaml).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            BootError::new(
                Category::Config,
                format!("the compose file is not valid YAML{at}"),
            )
        })?;
        let services = doc
            .get("services")
            .and_then(Value::as_mapping)
            .ok_or_else(|| {
                BootError::new(Category::Config, "the compose file has no `services`")
            })?;
        let mut images = Vec::new();
        for (name, svc) in services {
            let service = name.as_str().unwrap_or("?").to_owned();
            match svc.get("image").and_then(Value::as_str) {
                Some(written) => {
                    let reference = ImageReference::parse(written).map_err(|e| {
                        BootError::new(Category::Config, format!("service `{service}`: {e}"))
                    })?;
                    images.push(ServiceImage {
                        service,
                        written: written.to_owned(),
                        reference,
                    });
                }
                None if svc.get("build").is_some() => {
                    return Err(BootError::new(
                        Category::Config,
                        format!("service `{service}` has only `build:`; a CVM pulls images and cannot build them"),
                    )
                    .hint("build and push the image, then name it with `image:` in the compose file"));
                }
                None => {
                    return Err(BootError::new(
                        Category::Config,
                        format!("service `{service}` has no `image:`"),
                    ));
                }
            }
        }
        if images.is_empty() {
            return Err(BootError::new(
                Category::Config,
                "the compose file defines no services",
            ));
        }
        Ok(Self { doc, images })
    }

    /// The compose file to run, with each service's image replaced by what
    /// the engine knows it as (`replacements`: service → local name), so the
    /// compose tool finds every image locally and never pulls.
    pub fn render(&self, replacements: &[(String, String)]) -> String {
        let mut doc = self.doc.clone();
        if let Some(services) = doc.get_mut("services").and_then(Value::as_mapping_mut) {
            for (service, image) in replacements {
                if let Some(svc) = services
                    .get_mut(service.as_str())
                    .and_then(Value::as_mapping_mut)
                {
                    svc.insert(Value::from("image"), Value::from(image.as_str()));
                    // Never pull, whatever the file asked for.
                    svc.remove("pull_policy");
                }
            }
        }
        serde_yaml_ng::to_string(&doc).expect("a parsed document serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_and_errors() {
        let c = ComposeFile::parse(
            "services:\n  web:\n    image: alice/web:1\n    environment:\n      - A=${A}\n  db:\n    image: ghcr.io/o/db@sha256:1111111111111111111111111111111111111111111111111111111111111111\n",
        )
        .unwrap();
        assert_eq!(c.images.len(), 2);
        assert_eq!(c.images[0].reference.to_string(), "docker.io/alice/web:1");
        let out = c.render(&[("db".into(), "sha256:abc".into())]);
        assert!(
            out.contains("image: sha256:abc") && out.contains("A=${A}"),
            "{out}"
        );
        let e = ComposeFile::parse("services:\n  x:\n    build: .\n").unwrap_err();
        assert!(e.message.contains("only `build:`"), "{}", e.message);
        assert!(ComposeFile::parse("services: [").is_err());
        assert!(ComposeFile::parse("services:\n  x:\n    image: Bad:Ref:x\n").is_err());
    }
}
