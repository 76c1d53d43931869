//! The rules of the container isolation mode ("dstack's rules"): what a
//! compose file may not do even inside a CVM that is a machine of its own.
//! See the [module documentation](super) for the list and the reasons.

use super::dockerfile::{Interpolation, base_images, interpolate};
use super::yaml::{scalar_text, shown};
use super::{BaseImage, ComposeError, ComposeFile, Scope, ServiceBuild, Site};
use crate::reference::ImageReference;
use serde_yaml_ng::{Mapping, Value};

/// `build.additional_contexts` as (name, value) pairs, from a mapping or a
/// list of `NAME=VALUE`.
pub(super) fn additional_contexts(build: &Value) -> Vec<(String, Value)> {
    match build.get("additional_contexts") {
        Some(Value::Mapping(m)) => m.iter().map(|(k, v)| (scalar_text(k), v.clone())).collect(),
        Some(Value::Sequence(s)) => s
            .iter()
            .filter_map(Value::as_str)
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.to_owned(), Value::from(v)),
                None => (item.to_owned(), Value::Null),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The image an `additional_contexts` value names (`docker-image://REF`).
pub(super) fn context_image(value: &str) -> Option<&str> {
    value.strip_prefix("docker-image://")
}

/// Whether a build context is fetched by the engine (a Git or HTTP URL),
/// not read from the CVM's disk.
pub(super) fn is_remote(context: &str) -> bool {
    [
        "http://",
        "https://",
        "git://",
        "git@",
        "ssh://",
        "github.com/",
    ]
    .iter()
    .any(|p| context.starts_with(p))
}

/// What a service with `build:` builds: its target image and the base
/// images its inline Dockerfile and `docker-image://` contexts name.
pub(super) fn service_build(
    service: &str,
    image: Option<&str>,
    build: &Value,
) -> Result<ServiceBuild, ComposeError> {
    let site = Site::service(service, "build");
    let image = match image {
        Some(written) => Some(ImageReference::parse(written).map_err(|e| {
            Site::service(service, "image").err(&format!(
                "names the image to build as `{}`, which is not an image reference ({}): name it like `ghcr.io/owner/app:tag`, or remove `image:`",
                shown(written),
                shown(&e.to_string())
            ))
        })?),
        None => None,
    };
    let contexts = additional_contexts(build);
    let names: Vec<String> = contexts.iter().map(|(k, _)| k.clone()).collect();
    let mut bases: Vec<BaseImage> = Vec::new();
    if let Some(inline) = build.get("dockerfile_inline") {
        // `$$` is a `$` to the Dockerfile; a name made of an env value
        // (`FROM ${BASE}`) keeps a `$` and is not pulled here.
        let text = inline_source(&site, inline)?.replace("$$", "$");
        bases = base_images(&site, &text, &names)?;
    }
    for (name, value) in &contexts {
        let Some(written) = value.as_str().and_then(context_image) else {
            continue;
        };
        if written.contains('$') {
            return Err(site.interpolated("`build.additional_contexts`"));
        }
        let reference = ImageReference::parse(written).map_err(|e| {
            site.err(&format!(
                "names `{}` in `build.additional_contexts.{}`, which is not an image reference ({}): write `docker-image://` and an image like `debian:12`",
                shown(written),
                shown(name),
                shown(&e.to_string())
            ))
        })?;
        if !bases.iter().any(|b| b.written == written) {
            bases.push(BaseImage {
                written: written.to_owned(),
                reference,
            });
        }
    }
    Ok(ServiceBuild {
        service: service.to_owned(),
        image,
        bases,
    })
}

/// The text of `build.dockerfile_inline` as written, if it is a string
/// whose `$`s compose can interpolate (`$$`, `$NAME`, `${NAME…}`).
pub(super) fn inline_source<'v>(site: &Site, inline: &'v Value) -> Result<&'v str, ComposeError> {
    let text = inline.as_str().ok_or_else(|| {
        site.err("has a `build.dockerfile_inline` that is not a string: write the Dockerfile as a block (`dockerfile_inline: |`)")
    })?;
    interpolate(text, &|_| Some("x".to_owned())).map_err(|e| interpolation_error(site, e))?;
    Ok(text)
}

/// The text of `build.dockerfile_inline` as compose would build it: its
/// `$`s interpolated from `env` (the CVM's env, as the compose tool gets
/// it).
pub(super) fn inline_text(
    site: &Site,
    inline: &Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ComposeError> {
    interpolate(inline_source(site, inline)?, env).map_err(|e| interpolation_error(site, e))
}

fn interpolation_error(site: &Site, e: Interpolation) -> ComposeError {
    match e {
        Interpolation::Invalid(_) => site.err("has a `$` in `build.dockerfile_inline` that compose cannot interpolate: write `$$` for a `$` of the Dockerfile, `${NAME}` for an env value"),
        Interpolation::TooLarge => site.err(&format!(
            "has a `build.dockerfile_inline` that env values make larger than {} MiB: keep the Dockerfile small, put large data in files of the image",
            super::dockerfile::MAX_INTERPOLATED_BYTES >> 20
        )),
        Interpolation::Required { name, message } => site.err(&format!(
            "needs the env variable `{}` in `build.dockerfile_inline`, which is unset or empty ({}): set it in the env",
            shown(&name),
            shown(&message)
        )),
    }
}

impl ComposeFile {
    /// The container mode's rules (see the [module documentation](super)).
    pub(super) fn check_container_policy(&self) -> Result<(), ComposeError> {
        self.check_tags()?;
        let top = self
            .doc
            .as_mapping()
            .ok_or_else(|| ComposeError::new("the compose file is not a mapping"))?;
        for (key, value) in top {
            let Some(key) = key.as_str() else { continue };
            match key {
                "include" => {
                    return Err(ComposeError::top(
                        key,
                        "the top-level `include` makes compose read other compose files, which Berth does not check: put all services in this one file".to_owned(),
                    ));
                }
                "networks" => super::network::check_network_count(value)?,
                "secrets" | "configs" => check_top_files(key, value)?,
                _ => {}
            }
        }
        let scope = Scope::of(top);
        let services = top
            .get("services")
            .and_then(Value::as_mapping)
            .ok_or_else(|| ComposeError::new("the compose file has no `services`"))?;
        let mut sizes = super::Sizes::default();
        for (name, svc) in services {
            let (name, svc) = super::named_service(name, svc)?;
            check_service(&scope, name, svc)?;
            sizes.add(name, svc)?;
        }
        Ok(())
    }
}

/// Top-level `secrets`/`configs`: a `file` inside the app's folder.
fn check_top_files(key: &str, value: &Value) -> Result<(), ComposeError> {
    let Value::Mapping(entries) = value else {
        return Ok(());
    };
    for (name, entry) in entries {
        let name = scalar_text(name);
        let site = Site::entry(key, &name);
        if let Some(file) = entry.get("file") {
            inside_folder(&site, "`file`", file)?;
        }
    }
    Ok(())
}

fn check_service(scope: &Scope, name: &str, svc: &Mapping) -> Result<(), ComposeError> {
    for (key, value) in svc {
        let Some(key) = key.as_str() else { continue };
        let site = Site::service(name, key);
        match key {
            "build" => check_build(scope, &site, value)?,
            "env_file" | "label_file" => match value {
                Value::Sequence(items) => {
                    for item in items {
                        match item {
                            Value::Mapping(m) => {
                                inside_folder(
                                    &site,
                                    &format!("`{key}`"),
                                    m.get("path").unwrap_or(&Value::Null),
                                )?;
                            }
                            other => inside_folder(&site, &format!("`{key}`"), other)?,
                        }
                    }
                }
                other => inside_folder(&site, &format!("`{key}`"), other)?,
            },
            "extends" if value.get("file").is_some() => {
                return Err(site.err("has `extends` with a `file`, which makes compose read another compose file, which Berth does not check: extend only a service of this file, without `file`"));
            }
            "gpus" => return Err(no_gpu(&site, "`gpus`")),
            "deploy" => {
                let devices = value
                    .get("resources")
                    .and_then(|r| r.get("reservations"))
                    .and_then(|r| r.get("devices"));
                if devices.is_some_and(|d| !d.is_null()) {
                    return Err(no_gpu(&site, "`deploy.resources.reservations.devices`"));
                }
            }
            "ports" => super::network::check_port_forms(&site, value)?,
            _ => {}
        }
    }
    Ok(())
}

fn no_gpu(site: &Site, what: &str) -> ComposeError {
    site.err(&format!(
        "reserves a device (a GPU) with {what}: a CVM in container isolation has no GPU (the node passes none into it, and there is no confidential GPU here): remove it and run on the CPU"
    ))
}

fn check_build(scope: &Scope, site: &Site, value: &Value) -> Result<(), ComposeError> {
    let build = match value {
        Value::String(_) => return check_context(site, "`build`", value),
        Value::Mapping(m) => m,
        _ => {
            return Err(site.err("has a `build` that is neither a folder nor a mapping: write `build: {context: ., dockerfile_inline: |}`"));
        }
    };
    if build.contains_key("dockerfile") && build.contains_key("dockerfile_inline") {
        return Err(site
            .err("sets both `build.dockerfile` and `build.dockerfile_inline`: keep one of them"));
    }
    for (key, v) in build {
        match key.as_str().unwrap_or_default() {
            "context" => check_context(site, "`build.context`", v)?,
            "dockerfile" => inside_folder(site, "`build.dockerfile`", v)?,
            "dockerfile_inline" => {
                inline_source(site, v)?;
            }
            "additional_contexts" => {
                if !matches!(v, Value::Mapping(_) | Value::Sequence(_) | Value::Null) {
                    return Err(site.err("has a `build.additional_contexts` that is neither a mapping nor a list: write `NAME: VALUE` entries"));
                }
                for (name, value) in additional_contexts(value) {
                    check_additional_context(scope, site, &name, &value)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// One `build.additional_contexts` entry: another service's image
/// (`service:NAME`), an image (`docker-image://REF`), a URL, or a folder
/// inside the app's.
fn check_additional_context(
    scope: &Scope,
    site: &Site,
    name: &str,
    value: &Value,
) -> Result<(), ComposeError> {
    let what = format!("`build.additional_contexts.{}`", shown(name));
    let Some(s) = value.as_str() else {
        return Err(site.err(&format!(
            "has {what} that is not a string: name a folder, `service:NAME` or `docker-image://IMAGE`"
        )));
    };
    if s.contains('$') {
        return Err(site.interpolated(&what));
    }
    if let Some(other) = s.strip_prefix("service:") {
        if !scope.services.contains(other) {
            return Err(site.err(&format!(
                "has {what} `{}`, which is not a service of this file: name a service of this file",
                shown(s)
            )));
        }
        return Ok(());
    }
    if let Some(image) = context_image(s) {
        return ImageReference::parse(image).map(|_| ()).map_err(|e| {
            site.err(&format!(
                "has {what} `{}`, which is not an image reference ({}): write `docker-image://` and an image like `debian:12`",
                shown(s),
                shown(&e.to_string())
            ))
        });
    }
    if is_remote(s) {
        return Ok(());
    }
    let path = s.strip_prefix("oci-layout://").unwrap_or(s);
    inside_folder(site, &what, &Value::from(path))
}

/// A build context: a URL, or a folder inside the app's.
fn check_context(site: &Site, what: &str, value: &Value) -> Result<(), ComposeError> {
    if let Value::String(s) = value
        && !s.contains('$')
        && is_remote(s)
    {
        return Ok(());
    }
    inside_folder(site, what, value)
}

/// A path compose reads inside the CVM: relative to the compose file's
/// folder, never out of it (no absolute path, no `..`, no `~`), and
/// without `$` (an env value could make it either).
fn inside_folder(site: &Site, what: &str, value: &Value) -> Result<(), ComposeError> {
    let path = match value {
        Value::Null => return Ok(()),
        Value::String(s) => s.as_str(),
        _ => {
            return Err(site.err(&format!(
                "has {what} that is not a path: write a path relative to the compose file's folder"
            )));
        }
    };
    if path.contains('$') {
        return Err(site.interpolated(what));
    }
    let drive =
        path.len() >= 2 && path.as_bytes()[1] == b':' && path.as_bytes()[0].is_ascii_alphabetic();
    let outside = path.starts_with(['/', '\\', '~'])
        || drive
        || path.split(['/', '\\']).any(|part| part == "..");
    if outside {
        return Err(site.err(&format!(
            "has {what} `{}`, which points outside the app's folder: compose reads it inside the CVM, from the compose file's folder only: use a path inside it, without `..`",
            shown(path)
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "container_tests.rs"]
mod tests;
