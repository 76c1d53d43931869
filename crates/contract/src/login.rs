//! The registry logins a CVM reads from its decrypted env: the documented
//! `DSTACK_DOCKER_*` / `DSTACK_AWS_*` variable names and the grammar of an
//! ECR registry host. Defined here, without I/O, so the boot agent (through
//! `registry::credentials`) and the control plane (which tells them to the
//! web console) use one definition.

/// `DSTACK_DOCKER_USERNAME`.
pub const DOCKER_USERNAME: &str = "DSTACK_DOCKER_USERNAME";
/// `DSTACK_DOCKER_PASSWORD`.
pub const DOCKER_PASSWORD: &str = "DSTACK_DOCKER_PASSWORD";
/// `DSTACK_DOCKER_REGISTRY`.
pub const DOCKER_REGISTRY: &str = "DSTACK_DOCKER_REGISTRY";
/// `DSTACK_AWS_ACCESS_KEY_ID`.
pub const AWS_ACCESS_KEY_ID: &str = "DSTACK_AWS_ACCESS_KEY_ID";
/// `DSTACK_AWS_SECRET_ACCESS_KEY`.
pub const AWS_SECRET_ACCESS_KEY: &str = "DSTACK_AWS_SECRET_ACCESS_KEY";
/// `DSTACK_AWS_REGION`.
pub const AWS_REGION: &str = "DSTACK_AWS_REGION";
/// `DSTACK_AWS_ECR_REGISTRY`.
pub const AWS_ECR_REGISTRY: &str = "DSTACK_AWS_ECR_REGISTRY";
/// `DSTACK_AWS_SESSION_TOKEN`.
pub const AWS_SESSION_TOKEN: &str = "DSTACK_AWS_SESSION_TOKEN";

/// [`parse_ecr_host`]'s grammar as a regular expression (group 1 the
/// account, group 2 the region), for front ends that check before sending.
/// Change both together: the console's browser test compares them.
pub const ECR_HOST_PATTERN: &str =
    r"^([0-9]{12})\.dkr\.ecr\.([a-z0-9](?:[a-z0-9-]*[a-z0-9])?)\.amazonaws\.com(?:\.cn)?$";

/// `ACCOUNT.dkr.ecr.REGION.amazonaws.com` or `….amazonaws.com.cn`, where
/// ACCOUNT is 12 digits and REGION is lowercase letters, digits and `-`
/// (e.g. `us-east-1`, `cn-north-1`, `us-gov-west-1`). Returns (account,
/// region).
pub fn parse_ecr_host(host: &str) -> Option<(&str, &str)> {
    let rest = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let (account, rest) = rest.split_once(".dkr.ecr.")?;
    let region = rest;
    let valid_account = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
    let valid_region = !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-');
    (valid_account && valid_region).then_some((account, region))
}
