//! Compose files and the shared-engine policy
//! (`contract::ComposeFile::parse_and_check`), for any text:
//! - parsing and checking never panic; a refusal's message and service name
//!   hold no raw control character;
//! - whatever passes the policy renders (as the boot agent renders it: image
//!   IDs in place of images, with and without the CVM's limits) to YAML that
//!   parses back and passes the policy again, with the same services, and
//!   rendering that again changes nothing.
//!
//! Shared by the fuzz target `fuzz/fuzz_targets/compose.rs` and the property
//! test `crates/contract/tests/fuzz_compose.rs`.

use contract::ComposeFile;
use contract::policy::ServiceLimits;

pub fn check(data: &[u8]) {
    let yaml = String::from_utf8_lossy(data);
    let file = match ComposeFile::parse_and_check(&yaml) {
        Ok(file) => file,
        Err(e) => {
            assert!(
                !e.message.chars().any(char::is_control),
                "raw control character in {:?}",
                e.message
            );
            if let Some(s) = &e.service {
                assert!(!s.chars().any(char::is_control), "{s:?}");
            }
            return;
        }
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
