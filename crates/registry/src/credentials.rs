//! [`CredentialSet`]: the registry logins of a CVM, resolved from exactly
//! the documented `DSTACK_*` variables of its decrypted env.
//!
//! | login | variables |
//! | --- | --- |
//! | [`DockerLogin`] (Docker Hub, GHCR, any OCI registry) | `DSTACK_DOCKER_USERNAME`, `DSTACK_DOCKER_PASSWORD`, optional `DSTACK_DOCKER_REGISTRY` (default `docker.io`) |
//! | [`EcrLogin`] (AWS ECR) | `DSTACK_AWS_ACCESS_KEY_ID`, `DSTACK_AWS_SECRET_ACCESS_KEY`, `DSTACK_AWS_REGION`, `DSTACK_AWS_ECR_REGISTRY`, optional `DSTACK_AWS_SESSION_TOKEN` |
//!
//! Both may be set; each applies only to its own registry
//! ([`CredentialSet::for_registry`]). No other variable is read: not
//! `DOCKER_*`, not `AWS_*`, so that a container's own settings can never
//! turn into the boot agent's login by accident.
//!
//! A set that is only partly given is an error rather than "no login", so
//! that a typo in one variable name surfaces at boot as "DSTACK_DOCKER_PASSWORD
//! is missing" instead of as an anonymous pull that fails with 401. An empty
//! value counts as missing. Errors name variables, never values.

use std::collections::BTreeMap;

use contract::SecretValue;

use crate::reference::{DOCKER_HUB, normalize_registry, same_registry};

pub use contract::login::{
    AWS_ACCESS_KEY_ID, AWS_ECR_REGISTRY, AWS_REGION, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
    DOCKER_PASSWORD, DOCKER_REGISTRY, DOCKER_USERNAME,
};

/// Every variable this module reads, in the order of the design table.
pub const CREDENTIAL_VARIABLES: [&str; 8] = [
    DOCKER_USERNAME,
    DOCKER_PASSWORD,
    DOCKER_REGISTRY,
    AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY,
    AWS_REGION,
    AWS_ECR_REGISTRY,
    AWS_SESSION_TOKEN,
];

/// The four ECR variables that must be set together.
const ECR_REQUIRED: [&str; 4] = [
    AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY,
    AWS_REGION,
    AWS_ECR_REGISTRY,
];

/// A username/password login to one registry (Docker Hub, GHCR or any OCI
/// registry). `Debug` shows the username and redacts the password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerLogin {
    /// Normalised registry name, e.g. `docker.io` or `ghcr.io`.
    pub registry: String,
    /// The user name.
    pub username: String,
    /// The password or access token.
    pub password: SecretValue,
}

/// AWS credentials for one ECR registry. The pull engine exchanges them for
/// a 12-hour registry password with `GetAuthorizationToken`.
/// `Debug` redacts the secret key and session token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EcrLogin {
    /// Registry host, `ACCOUNT.dkr.ecr.REGION.amazonaws.com[.cn]`, lowercase.
    pub registry: String,
    /// The 12-digit AWS account id from the registry host.
    pub account: String,
    /// The AWS region, e.g. `us-east-1`.
    pub region: String,
    /// The access key id (not secret on its own).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: SecretValue,
    /// The session token of temporary credentials, if any.
    pub session_token: Option<SecretValue>,
}

/// The registry logins found in an env: at most one of each kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CredentialSet {
    /// The `DSTACK_DOCKER_*` login, if given.
    pub docker: Option<DockerLogin>,
    /// The `DSTACK_AWS_*` login, if given.
    pub ecr: Option<EcrLogin>,
}

/// The login that applies to one registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    /// Username and password (Basic, or exchanged for a Bearer token).
    Docker(&'a DockerLogin),
    /// AWS credentials for ECR.
    Ecr(&'a EcrLogin),
}

impl CredentialSet {
    /// Resolves the logins from `vars`, a map of env variable names to
    /// values (the caller has already merged `-e` arguments over the
    /// process env). Variables other than [`CREDENTIAL_VARIABLES`] are
    /// ignored.
    pub fn from_env(vars: &BTreeMap<String, SecretValue>) -> Result<Self, CredentialsError> {
        Self::resolve(|name| vars.get(name))
    }

    /// Same as [`CredentialSet::from_env`] for a list of pairs; when a name
    /// occurs more than once, the last occurrence wins.
    pub fn from_env_pairs(vars: &[(String, SecretValue)]) -> Result<Self, CredentialsError> {
        Self::resolve(|name| vars.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v))
    }

    fn resolve<'v>(
        lookup: impl Fn(&str) -> Option<&'v SecretValue>,
    ) -> Result<Self, CredentialsError> {
        // An empty value counts as missing.
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let docker = resolve_docker(&get)?;
        let ecr = resolve_ecr(&get)?;
        if let (Some(docker), Some(ecr)) = (&docker, &ecr)
            && same_registry(&docker.registry, &ecr.registry)
        {
            return Err(CredentialsError::SameRegistry);
        }
        Ok(Self { docker, ecr })
    }

    /// Whether no login is configured (pulls are anonymous).
    pub fn is_empty(&self) -> bool {
        self.docker.is_none() && self.ecr.is_none()
    }

    /// The login for `registry` (a normalised registry name such as
    /// [`crate::reference::ImageReference::registry`]; Docker Hub aliases
    /// and letter case are tolerated), or `None` for an anonymous pull.
    pub fn for_registry(&self, registry: &str) -> Option<Credential<'_>> {
        if let Some(docker) = &self.docker
            && same_registry(&docker.registry, registry)
        {
            return Some(Credential::Docker(docker));
        }
        if let Some(ecr) = &self.ecr
            && same_registry(&ecr.registry, registry)
        {
            return Some(Credential::Ecr(ecr));
        }
        None
    }
}

fn resolve_docker<'v>(
    get: &impl Fn(&str) -> Option<&'v SecretValue>,
) -> Result<Option<DockerLogin>, CredentialsError> {
    let (username, password, registry) = (
        get(DOCKER_USERNAME),
        get(DOCKER_PASSWORD),
        get(DOCKER_REGISTRY),
    );
    let (username, password) = match (username, password) {
        (Some(username), Some(password)) => (username, password),
        (None, None) if registry.is_none() => return Ok(None),
        _ => {
            return Err(incomplete(
                Provider::Docker,
                &[DOCKER_USERNAME, DOCKER_PASSWORD],
                get,
            ));
        }
    };
    let registry = match registry {
        Some(value) => normalize_registry(value.expose().trim()).ok_or(
            CredentialsError::InvalidDockerRegistry {
                variable: DOCKER_REGISTRY,
            },
        )?,
        None => DOCKER_HUB.to_owned(),
    };
    Ok(Some(DockerLogin {
        registry,
        username: username.expose().to_owned(),
        password: password.clone(),
    }))
}

fn resolve_ecr<'v>(
    get: &impl Fn(&str) -> Option<&'v SecretValue>,
) -> Result<Option<EcrLogin>, CredentialsError> {
    let values = ECR_REQUIRED.map(get);
    let [Some(key_id), Some(secret), Some(region), Some(registry)] = values else {
        if values.iter().all(Option::is_none) && get(AWS_SESSION_TOKEN).is_none() {
            return Ok(None);
        }
        return Err(incomplete(Provider::Ecr, &ECR_REQUIRED, get));
    };
    let registry = registry.expose().trim().to_ascii_lowercase();
    let registry = registry.strip_prefix("https://").unwrap_or(&registry);
    let registry = registry.strip_suffix('/').unwrap_or(registry);
    let (account, registry_region) =
        parse_ecr_host(registry).ok_or(CredentialsError::InvalidEcrRegistry {
            variable: AWS_ECR_REGISTRY,
        })?;
    let region = region.expose().trim();
    if registry_region != region {
        return Err(CredentialsError::EcrRegionMismatch {
            registry_variable: AWS_ECR_REGISTRY,
            region_variable: AWS_REGION,
        });
    }
    Ok(Some(EcrLogin {
        account: account.to_owned(),
        region: region.to_owned(),
        registry: registry.to_owned(),
        access_key_id: key_id.expose().trim().to_owned(),
        secret_access_key: secret.clone(),
        session_token: get(AWS_SESSION_TOKEN).cloned(),
    }))
}

fn incomplete<'v>(
    provider: Provider,
    required: &[&'static str],
    get: &impl Fn(&str) -> Option<&'v SecretValue>,
) -> CredentialsError {
    CredentialsError::Incomplete {
        provider,
        missing: required
            .iter()
            .copied()
            .filter(|name| get(name).is_none())
            .collect(),
    }
}

use contract::login::parse_ecr_host;

/// Which kind of login a variable belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// `DSTACK_DOCKER_*`.
    Docker,
    /// `DSTACK_AWS_*`.
    Ecr,
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Docker => "Docker registry",
            Self::Ecr => "AWS ECR",
        })
    }
}

/// Why the registry variables of an env do not make a usable login. Every
/// message names variables and never contains a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// Some variables of a login are set, others are missing or empty.
    #[error("{provider} credentials are incomplete: {} {} missing or empty", .missing.join(", "), if .missing.len() == 1 { "is" } else { "are" })]
    Incomplete {
        /// Which login.
        provider: Provider,
        /// The required variables that are missing or empty.
        missing: Vec<&'static str>,
    },
    /// `DSTACK_DOCKER_REGISTRY` is not a registry host.
    #[error(
        "{variable} is not a registry host; set it to a host like `ghcr.io` or `registry.example.com:5000`, or leave it unset for Docker Hub"
    )]
    InvalidDockerRegistry {
        /// The variable at fault.
        variable: &'static str,
    },
    /// `DSTACK_AWS_ECR_REGISTRY` is not an ECR registry host.
    #[error(
        "{variable} is not an ECR registry host; expected `ACCOUNT.dkr.ecr.REGION.amazonaws.com` with a 12-digit ACCOUNT"
    )]
    InvalidEcrRegistry {
        /// The variable at fault.
        variable: &'static str,
    },
    /// The region in the ECR host differs from `DSTACK_AWS_REGION`.
    #[error(
        "the region in {registry_variable} does not match {region_variable}; an ECR registry must be accessed in its own region"
    )]
    EcrRegionMismatch {
        /// `DSTACK_AWS_ECR_REGISTRY`.
        registry_variable: &'static str,
        /// `DSTACK_AWS_REGION`.
        region_variable: &'static str,
    },
    /// Both logins name the same registry, so which applies is ambiguous.
    #[error(
        "DSTACK_DOCKER_REGISTRY and DSTACK_AWS_ECR_REGISTRY name the same registry; set only the DSTACK_AWS_* variables for an ECR registry"
    )]
    SameRegistry,
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "canary-5ecr3t!Zq9";
    const ECR: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretValue> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), SecretValue::from(*v)))
            .collect()
    }

    fn resolve(pairs: &[(&str, &str)]) -> Result<CredentialSet, CredentialsError> {
        CredentialSet::from_env(&env(pairs))
    }

    fn ecr_vars() -> Vec<(&'static str, &'static str)> {
        vec![
            (AWS_ACCESS_KEY_ID, "AKIAEXAMPLE"),
            (AWS_SECRET_ACCESS_KEY, CANARY),
            (AWS_REGION, "eu-west-1"),
            (AWS_ECR_REGISTRY, ECR),
        ]
    }

    #[test]
    fn nothing_set_means_anonymous() {
        let set = resolve(&[
            ("PATH", "/bin"),
            ("DOCKER_PASSWORD", "x"),
            ("AWS_REGION", "x"),
        ])
        .unwrap();
        assert!(set.is_empty());
        assert_eq!(set.for_registry("docker.io"), None);
    }

    #[test]
    fn docker_hub_by_default() {
        let set = resolve(&[(DOCKER_USERNAME, "alice"), (DOCKER_PASSWORD, CANARY)]).unwrap();
        let docker = set.docker.as_ref().unwrap();
        assert_eq!(docker.registry, "docker.io");
        assert_eq!(docker.username, "alice");
        assert_eq!(docker.password.expose(), CANARY);
        assert!(set.ecr.is_none());
        for name in [
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "Docker.IO",
        ] {
            assert_eq!(
                set.for_registry(name),
                Some(Credential::Docker(docker)),
                "{name}"
            );
        }
        assert_eq!(set.for_registry("ghcr.io"), None);
    }

    #[test]
    fn docker_registry_is_normalised() {
        for (value, expected) in [
            ("ghcr.io", "ghcr.io"),
            ("https://ghcr.io/", "ghcr.io"),
            ("index.docker.io", "docker.io"),
            ("registry-1.docker.io", "docker.io"),
            ("https://index.docker.io/v1/", "docker.io"),
            ("localhost:5000", "localhost:5000"),
        ] {
            let set = resolve(&[
                (DOCKER_USERNAME, "alice"),
                (DOCKER_PASSWORD, CANARY),
                (DOCKER_REGISTRY, value),
            ])
            .unwrap();
            assert_eq!(set.docker.as_ref().unwrap().registry, expected, "{value}");
            assert!(set.for_registry(expected).is_some());
        }
        let set = resolve(&[
            (DOCKER_USERNAME, "alice"),
            (DOCKER_PASSWORD, CANARY),
            (DOCKER_REGISTRY, "ghcr.io"),
        ])
        .unwrap();
        assert_eq!(set.for_registry("docker.io"), None);
    }

    #[test]
    fn ecr_login() {
        let mut vars = ecr_vars();
        vars.push((AWS_SESSION_TOKEN, "session-canary"));
        let set = resolve(&vars).unwrap();
        let ecr = set.ecr.as_ref().unwrap();
        assert_eq!(ecr.registry, ECR);
        assert_eq!(ecr.account, "123456789012");
        assert_eq!(ecr.region, "eu-west-1");
        assert_eq!(ecr.access_key_id, "AKIAEXAMPLE");
        assert_eq!(ecr.secret_access_key.expose(), CANARY);
        assert_eq!(
            ecr.session_token.as_ref().unwrap().expose(),
            "session-canary"
        );
        assert_eq!(set.for_registry(ECR), Some(Credential::Ecr(ecr)));
        assert_eq!(set.for_registry("docker.io"), None);

        let set = resolve(&ecr_vars()).unwrap();
        assert_eq!(set.ecr.unwrap().session_token, None);
    }

    #[test]
    fn ecr_china_and_case() {
        let set = resolve(&[
            (AWS_ACCESS_KEY_ID, "AKIAEXAMPLE"),
            (AWS_SECRET_ACCESS_KEY, CANARY),
            (AWS_REGION, "cn-north-1"),
            (
                AWS_ECR_REGISTRY,
                "123456789012.DKR.ecr.cn-north-1.amazonaws.com.cn",
            ),
        ])
        .unwrap();
        let ecr = set.ecr.as_ref().unwrap();
        assert_eq!(
            ecr.registry,
            "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"
        );
        assert_eq!(ecr.region, "cn-north-1");
        assert!(
            set.for_registry("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn")
                .is_some()
        );
    }

    #[test]
    fn ecr_registry_scheme_and_slash_are_tolerated() {
        let mut vars = ecr_vars();
        let with_scheme = format!("https://{ECR}/");
        vars[3] = (AWS_ECR_REGISTRY, &with_scheme);
        assert_eq!(resolve(&vars).unwrap().ecr.unwrap().registry, ECR);
    }

    #[test]
    fn both_logins_apply_to_their_own_registry() {
        let mut vars = ecr_vars();
        vars.extend([
            (DOCKER_USERNAME, "alice"),
            (DOCKER_PASSWORD, "pw"),
            (DOCKER_REGISTRY, "ghcr.io"),
        ]);
        let set = resolve(&vars).unwrap();
        assert!(matches!(
            set.for_registry("ghcr.io"),
            Some(Credential::Docker(_))
        ));
        assert!(matches!(set.for_registry(ECR), Some(Credential::Ecr(_))));
        assert_eq!(set.for_registry("docker.io"), None);
    }

    #[test]
    fn partial_docker_sets_name_the_missing_variable() {
        let err = resolve(&[(DOCKER_USERNAME, "alice")]).unwrap_err();
        assert_eq!(
            err,
            CredentialsError::Incomplete {
                provider: Provider::Docker,
                missing: vec![DOCKER_PASSWORD]
            }
        );
        assert_eq!(
            err.to_string(),
            "Docker registry credentials are incomplete: DSTACK_DOCKER_PASSWORD is missing or empty"
        );
        let err = resolve(&[(DOCKER_PASSWORD, CANARY)]).unwrap_err();
        assert!(
            matches!(&err, CredentialsError::Incomplete { missing, .. } if missing == &[DOCKER_USERNAME])
        );
        let err = resolve(&[(DOCKER_REGISTRY, "ghcr.io")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Docker registry credentials are incomplete: DSTACK_DOCKER_USERNAME, DSTACK_DOCKER_PASSWORD are missing or empty"
        );
        // Empty counts as missing.
        let err = resolve(&[(DOCKER_USERNAME, "alice"), (DOCKER_PASSWORD, "")]).unwrap_err();
        assert!(
            matches!(&err, CredentialsError::Incomplete { missing, .. } if missing == &[DOCKER_PASSWORD])
        );
        // All empty is the same as unset.
        assert!(
            resolve(&[(DOCKER_USERNAME, ""), (DOCKER_PASSWORD, "")])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn partial_ecr_sets_name_every_missing_variable() {
        let all = ecr_vars();
        // Every non-empty proper subset of the four required variables.
        for mask in 1u8..15 {
            let present: Vec<_> = (0..4)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| all[i])
                .collect();
            let expected: Vec<_> = (0..4)
                .filter(|i| mask & (1 << i) == 0)
                .map(|i| all[i].0)
                .collect();
            let err = resolve(&present).unwrap_err();
            assert_eq!(
                err,
                CredentialsError::Incomplete {
                    provider: Provider::Ecr,
                    missing: expected.clone()
                },
                "mask {mask}"
            );
            for name in expected {
                assert!(err.to_string().contains(name));
            }
        }
        let err = resolve(&[(AWS_SESSION_TOKEN, "t")]).unwrap_err();
        assert!(
            matches!(err, CredentialsError::Incomplete { provider: Provider::Ecr, ref missing } if missing.len() == 4)
        );
    }

    #[test]
    fn invalid_ecr_registry() {
        for bad in [
            "ghcr.io",
            "12345678901.dkr.ecr.eu-west-1.amazonaws.com",
            "1234567890123.dkr.ecr.eu-west-1.amazonaws.com",
            "12345678901a.dkr.ecr.eu-west-1.amazonaws.com",
            "123456789012.dkr.ecr..amazonaws.com",
            "123456789012.dkr.ecr.eu_west_1.amazonaws.com",
            "123456789012.ecr.eu-west-1.amazonaws.com",
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com.evil.example",
        ] {
            let mut vars = ecr_vars();
            vars[3] = (AWS_ECR_REGISTRY, bad);
            let err = resolve(&vars).unwrap_err();
            assert_eq!(
                err,
                CredentialsError::InvalidEcrRegistry {
                    variable: AWS_ECR_REGISTRY
                },
                "{bad}"
            );
            assert!(!err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn ecr_region_must_match() {
        let mut vars = ecr_vars();
        vars[2] = (AWS_REGION, "us-east-1");
        let err = resolve(&vars).unwrap_err();
        assert!(matches!(err, CredentialsError::EcrRegionMismatch { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains(AWS_ECR_REGISTRY) && msg.contains(AWS_REGION),
            "{msg}"
        );
        assert!(
            !msg.contains("us-east-1") && !msg.contains("eu-west-1"),
            "{msg}"
        );
    }

    #[test]
    fn invalid_docker_registry_names_the_variable_only() {
        let err = resolve(&[
            (DOCKER_USERNAME, "alice"),
            (DOCKER_PASSWORD, CANARY),
            (DOCKER_REGISTRY, "not a host!"),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            CredentialsError::InvalidDockerRegistry {
                variable: DOCKER_REGISTRY
            }
        );
        assert!(!err.to_string().contains("not a host!"));
    }

    #[test]
    fn same_registry_for_both_is_rejected() {
        let mut vars = ecr_vars();
        vars.extend([
            (DOCKER_USERNAME, "AWS"),
            (DOCKER_PASSWORD, "pw"),
            (DOCKER_REGISTRY, ECR),
        ]);
        assert_eq!(resolve(&vars).unwrap_err(), CredentialsError::SameRegistry);
    }

    #[test]
    fn pairs_last_occurrence_wins() {
        let pairs: Vec<(String, SecretValue)> = [
            (DOCKER_USERNAME, "first"),
            (DOCKER_PASSWORD, CANARY),
            (DOCKER_USERNAME, "second"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), SecretValue::from(*v)))
        .collect();
        let set = CredentialSet::from_env_pairs(&pairs).unwrap();
        assert_eq!(set.docker.unwrap().username, "second");
    }

    #[test]
    fn debug_output_never_contains_secrets() {
        let mut vars = ecr_vars();
        vars.push((AWS_SESSION_TOKEN, CANARY));
        vars.extend([(DOCKER_USERNAME, "alice"), (DOCKER_PASSWORD, CANARY)]);
        let set = resolve(&vars).unwrap();
        let docker = set.docker.as_ref().unwrap();
        let ecr = set.ecr.as_ref().unwrap();
        let formatted = [
            format!("{set:?}"),
            format!("{set:#?}"),
            format!("{docker:?}"),
            format!("{ecr:?}"),
            format!("{:?}", Credential::Docker(docker)),
            format!("{:?}", Credential::Ecr(ecr)),
            format!("{:?}", set.for_registry("docker.io")),
            format!("{:?}", set.for_registry(ECR)),
        ];
        for text in formatted {
            assert!(!text.contains(CANARY), "{text}");
            assert!(text.contains("[redacted]"), "{text}");
        }
        assert!(format!("{docker:?}").contains("alice"));
    }

    #[test]
    fn error_messages_never_contain_values() {
        let canary_vars = [
            vec![(DOCKER_USERNAME, CANARY)],
            vec![(DOCKER_PASSWORD, CANARY)],
            vec![
                (DOCKER_USERNAME, "a"),
                (DOCKER_PASSWORD, "b"),
                (DOCKER_REGISTRY, CANARY),
            ],
            vec![(AWS_SECRET_ACCESS_KEY, CANARY)],
            vec![
                (AWS_ACCESS_KEY_ID, CANARY),
                (AWS_SECRET_ACCESS_KEY, CANARY),
                (AWS_REGION, CANARY),
                (AWS_ECR_REGISTRY, CANARY),
            ],
        ];
        for vars in canary_vars {
            let err = resolve(&vars).unwrap_err();
            assert!(!err.to_string().contains(CANARY), "{err}");
            assert!(!format!("{err:?}").contains(CANARY), "{err:?}");
        }
    }
}
