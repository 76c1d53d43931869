//! Compose files and the shared-engine policy
//! (`contract::ComposeFile::parse_and_check`), for any text:
//! - parsing and checking never panic; a refusal's message and service name
//!   hold no raw control character;
//! - whatever passes the policy renders (as the boot agent renders it: image
//!   IDs in place of images, with and without the CVM's limits) to YAML that
//!   parses back and passes the policy again, with the same services, and
//!   rendering that again changes nothing;
//! - the container isolation mode's rules
//!   (`ComposeFile::parse_and_check_for(…, Isolation::Container)`) never
//!   panic and refuse cleanly; what passes renders for the compose tool
//!   (inline Dockerfiles as files) or is refused cleanly, its YAML parses
//!   back with the same services, and every build file's path is relative,
//!   of plain components (the boot agent writes them in the compose folder).
//!
//! Shared by the fuzz target `fuzz/fuzz_targets/compose.rs` and the property
//! test `crates/contract/tests/fuzz_compose.rs`.

use contract::policy::ServiceLimits;
use contract::{ComposeError, ComposeFile, Isolation};

fn clean(e: &ComposeError) {
    assert!(
        !e.message.chars().any(char::is_control),
        "raw control character in {:?}",
        e.message
    );
    if let Some(s) = &e.service {
        assert!(!s.chars().any(char::is_control), "{s:?}");
    }
}

fn check_container(yaml: &str) {
    let file = match ComposeFile::parse_and_check_for(yaml, Isolation::Container) {
        Ok(file) => file,
        Err(e) => return clean(&e),
    };
    let env = |k: &str| k.starts_with(char::is_uppercase).then(|| format!("v-{k}"));
    let rendered = match file.render_in_container(&[], &[], &ServiceLimits::default(), &env) {
        Ok(r) => r,
        Err(e) => return clean(&e),
    };
    for f in &rendered.files {
        assert!(
            !f.path.is_empty()
                && std::path::Path::new(&f.path)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))),
            "build file path {:?}\n--- input\n{yaml}",
            f.path
        );
    }
    let again = ComposeFile::parse_for(&rendered.yaml, Isolation::Container).unwrap_or_else(|e| {
        panic!("passed the container mode, but its rendering does not parse: {e}\n--- input\n{yaml}\n--- rendered\n{}", rendered.yaml)
    });
    let services = |f: &ComposeFile| {
        let mut s: Vec<String> = f
            .images
            .iter()
            .map(|i| i.service.clone())
            .chain(f.builds.iter().map(|b| b.service.clone()))
            .collect();
        s.sort();
        s
    };
    assert_eq!(
        services(&again),
        services(&file),
        "rendered:\n{}",
        rendered.yaml
    );
}

pub fn check(data: &[u8]) {
    let yaml = String::from_utf8_lossy(data);
    check_container(&yaml);
    let file = match ComposeFile::parse_and_check(&yaml) {
        Ok(file) => file,
        Err(e) => return clean(&e),
    };
    let services: Vec<&str> = file.images.iter().map(|i| i.service.as_str()).collect();
    // What the boot agent hands the compose tool: each service's image ID.
    let replacements: Vec<(String, String)> = file
        .images
        .iter()
        .enumerate()
        .map(|(i, img)| (img.service.clone(), format!("sha256:{:064x}", i + 1)))
        .collect();
    let limits = ServiceLimits {
        cpu_millis: Some(1500),
        memory_bytes: Some(256 << 20),
        ..Default::default()
    };
    // Without a guest agent, a file mounting its socket renders to an
    // error (with one, the socket's host path is the platform's own and is
    // not for the tenant's policy to accept).
    let limited = file.render_with_limits(&replacements, &limits).ok();
    for rendered in [file.render(&[]), file.render(&replacements)]
        .into_iter()
        .chain(limited)
    {
        let again = ComposeFile::parse_and_check(&rendered).unwrap_or_else(|e| {
            panic!("passed the policy, but its rendering does not: {e}\n--- input\n{yaml}\n--- rendered\n{rendered}")
        });
        let again_services: Vec<&str> = again.images.iter().map(|i| i.service.as_str()).collect();
        assert_eq!(again_services, services, "rendered:\n{rendered}");
        assert_eq!(
            again.render(&[]),
            rendered,
            "rendering is not a fixed point"
        );
    }
    let plain = ComposeFile::parse_and_check(&file.render(&[])).unwrap();
    let written: Vec<&str> = file.images.iter().map(|i| i.written.as_str()).collect();
    let written_again: Vec<&str> = plain.images.iter().map(|i| i.written.as_str()).collect();
    assert_eq!(written_again, written, "images change when rendered");
}
