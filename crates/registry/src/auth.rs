//! The authenticator of one registry: which credential a request carries,
//! following the distribution spec's token authentication.
//!
//! The first request goes out without credentials (or with what the last
//! challenge asked for); a `401` carries a [`Challenge`]: `Basic` (htpasswd
//! registries, ECR) gets the login's username and password — for ECR the
//! password is the token from `GetAuthorizationToken` ([`crate::ecr`], which
//! renews it) — and `Bearer` gets a token fetched from the realm with Basic
//! credentials, cached per scope until shortly before it expires, with one
//! fetch in flight per scope whose answer (a token or an error) the callers
//! waiting for it share. A refused credential is renewed once by the
//! conversation ([`crate::client`]), which passes it back as `refused`.
//!
//! Credentials go only to the registry's endpoint and its token realm, and
//! only over HTTPS unless the host is loopback.

use crate::challenge::Challenge;
use crate::credentials::DockerLogin;
use crate::ecr::EcrTokenSource;
use crate::error::{Category, PullError};
use crate::events::{EventSink, retrying};
use crate::retry::Budget;
use crate::targets::{refused_by_resolver, refused_error};
use crate::transport::{Transport, classify};
use base64::Engine;
use contract::SecretValue;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderValue};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use url::Url;

/// A token without `expires_in` is treated as living this long (the spec's
/// default is 60 s; GHCR sends none).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are renewed this long before they expire.
const TOKEN_MARGIN: Duration = Duration::from_secs(10);

/// The login used with one registry.
#[derive(Debug)]
pub(crate) enum Login {
    /// No credentials.
    Anonymous,
    /// Username and password.
    Password {
        username: String,
        password: SecretValue,
        /// Where they came from, for messages (`DSTACK_DOCKER_*`, `config.json`).
        source: &'static str,
    },
    /// AWS credentials exchanged for an ECR token.
    Ecr(Box<EcrTokenSource>),
}

impl Login {
    pub(crate) fn from_docker(login: &DockerLogin, source: &'static str) -> Self {
        Login::Password {
            username: login.username.clone(),
            password: login.password.clone(),
            source,
        }
    }

    pub(crate) fn from_ecr(source: EcrTokenSource) -> Self {
        Login::Ecr(Box::new(source))
    }

    /// Where the credentials came from, for messages.
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Login::Anonymous => "no credentials",
            Login::Password { source, .. } => source,
            Login::Ecr(_) => "the DSTACK_AWS_* credentials",
        }
    }
}

#[derive(Clone)]
struct Token {
    value: SecretValue,
    renew_at: Instant,
}

/// One scope's cached token, and the last failed fetch (shared with the
/// callers that waited for it, so they do not each spend the retry budget
/// again).
#[derive(Default)]
struct TokenSlot {
    token: Option<Token>,
    failed: Option<(Instant, PullError)>,
}

/// The credentials side of one registry's conversation.
pub(crate) struct Authenticator {
    registry: String,
    /// The registry's endpoint, for messages.
    base: Url,
    transport: Transport,
    login: Login,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, Arc<tokio::sync::Mutex<TokenSlot>>>>,
    token_fetches: AtomicU64,
    events: EventSink,
}

impl Authenticator {
    pub(crate) fn new(
        registry: String,
        base: Url,
        transport: Transport,
        login: Login,
        events: EventSink,
    ) -> Self {
        Self {
            registry,
            base,
            transport,
            login,
            challenge: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
            token_fetches: AtomicU64::new(0),
            events,
        }
    }

    pub(crate) fn login(&self) -> &Login {
        &self.login
    }

    pub(crate) fn is_anonymous(&self) -> bool {
        matches!(self.login, Login::Anonymous)
    }

    /// Token requests sent so far.
    pub(crate) fn token_fetches(&self) -> u64 {
        self.token_fetches.load(Ordering::Relaxed)
    }

    /// The challenge requests answer now.
    pub(crate) fn challenge(&self) -> Option<Challenge> {
        self.challenge.lock().unwrap().clone()
    }

    /// The registry asked for `challenge`.
    pub(crate) fn challenged(&self, challenge: Challenge) {
        *self.challenge.lock().unwrap() = Some(challenge);
    }

    /// ` without credentials` or ` with <source>`, for messages.
    pub(crate) fn login_note(&self) -> String {
        match self.login {
            Login::Anonymous => " without credentials".into(),
            _ => format!(" with {}", self.login.describe()),
        }
    }

    /// The `Authorization` header for `scope` and the secret in it, fetching
    /// a token if needed (within `budget`). `refused` is a secret the
    /// registry just refused: a cached token or ECR password equal to it is
    /// renewed.
    pub(crate) async fn authorization(
        &self,
        scope: &str,
        refused: Option<&SecretValue>,
        budget: &Budget,
    ) -> Result<(Option<HeaderValue>, Option<SecretValue>), PullError> {
        match self.challenge() {
            None => Ok((None, None)),
            Some(Challenge::Basic) => match &self.login {
                Login::Anonymous => Ok((None, None)),
                Login::Password {
                    username, password, ..
                } => Ok((Some(basic(username, password)), Some(password.clone()))),
                Login::Ecr(ecr) => {
                    let password = ecr.password(refused, budget).await?;
                    Ok((Some(basic("AWS", &password)), Some(password)))
                }
            },
            Some(Challenge::Bearer { realm, service }) => {
                let token = self
                    .token(&realm, service.as_deref(), scope, refused, budget)
                    .await?;
                let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                    PullError::new(
                        Category::RegistryError,
                        format!(
                            "the token service of {} returned a token that is not a valid header value",
                            self.registry
                        ),
                    )
                })?;
                v.set_sensitive(true);
                Ok((Some(v), Some(token)))
            }
        }
    }

    /// A token for `scope`: cached, or fetched with one fetch in flight per
    /// scope whose answer (a token or an error) the callers waiting for it
    /// share.
    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        refused: Option<&SecretValue>,
        budget: &Budget,
    ) -> Result<SecretValue, PullError> {
        let asked = Instant::now();
        let slot = self
            .tokens
            .lock()
            .unwrap()
            .entry(scope.to_owned())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(t) = slot.token.as_ref()
            && Instant::now() < t.renew_at
            && Some(&t.value) != refused
        {
            return Ok(t.value.clone());
        }
        if let Some((at, err)) = &slot.failed
            && *at >= asked
        {
            return Err(err.clone());
        }
        match self.fetch_token(realm, service, scope, budget).await {
            Ok(token) => {
                let value = token.value.clone();
                slot.token = Some(token);
                slot.failed = None;
                Ok(value)
            }
            Err(e) => {
                slot.failed = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    fn unreachable(&self, reason: &str) -> PullError {
        crate::helpers::unreachable(&self.registry, &self.base, reason)
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        budget: &Budget,
    ) -> Result<Token, PullError> {
        let mut url = Url::parse(realm).map_err(|_| {
            PullError::new(
                Category::RegistryError,
                format!(
                    "{} sent an auth challenge whose realm is not a URL",
                    self.registry
                ),
            )
            .registry(&self.registry)
        })?;
        let realm_host = url.host_str().unwrap_or("").to_owned();
        if url.scheme() != "https" && !crate::endpoint::is_loopback_host(&realm_host) {
            return Err(PullError::config(format!(
                "{} asks for credentials at {realm_host} over plain HTTP; Berth sends credentials only over HTTPS (or to loopback)",
                self.registry
            ))
            .registry(&self.registry));
        }
        self.transport
            .guard
            .check(&url)
            .await
            .map_err(|r| refused_error(&self.registry, "the token service", &r))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        loop {
            let mut req = self.transport.http.get(url.clone());
            match &self.login {
                Login::Anonymous => {}
                Login::Password {
                    username, password, ..
                } => {
                    req = req.header(header::AUTHORIZATION, basic(username, password));
                }
                Login::Ecr(ecr) => {
                    let password = ecr.password(None, budget).await?;
                    req = req.header(header::AUTHORIZATION, basic("AWS", &password));
                }
            }
            self.token_fetches.fetch_add(1, Ordering::Relaxed);
            let Some(sent) = budget.bounded(req.send()).await else {
                return Err(self.unreachable(&format!(
                    "token service {realm_host} sent no answer within the retry budget of {}",
                    crate::helpers::human_duration(budget.total())
                )));
            };
            let (wait, reason) = match sent {
                Err(err) => {
                    if let Some(refused) = refused_by_resolver(&err) {
                        return Err(refused_error(&self.registry, "the token service", &refused));
                    }
                    let (failure, reason) = classify(&err);
                    if failure.is_fatal() {
                        return Err(
                            self.unreachable(&format!("token service {realm_host}: {reason}"))
                        );
                    }
                    (None, reason)
                }
                Ok(resp) if resp.status().is_success() => {
                    return self.read_token(resp, &realm_host, budget).await;
                }
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::REQUEST_TIMEOUT
                        || status.is_server_error()
                    {
                        (
                            crate::helpers::retry_after(resp.headers()),
                            format!("token service answered {status}"),
                        )
                    } else {
                        return Err(self.token_refused(status, &realm_host, scope));
                    }
                }
            };
            let on_retry = |attempt, delay| {
                retrying(
                    &self.events,
                    &self.registry,
                    "token",
                    attempt,
                    delay,
                    &reason,
                )
            };
            if budget.retry(wait, on_retry).await.is_err() {
                return Err(self.unreachable(&reason));
            }
        }
    }

    /// The token service's final answer that is not a token.
    fn token_refused(&self, status: StatusCode, realm_host: &str, scope: &str) -> PullError {
        match status {
            StatusCode::UNAUTHORIZED => match &self.login {
                Login::Anonymous => PullError::new(
                    Category::AccessDenied,
                    format!(
                        "{} requires credentials and none are configured for it",
                        self.registry
                    ),
                )
                .hint(no_credentials_hint(&self.registry)),
                login => PullError::new(
                    Category::CredentialsRejected,
                    format!(
                        "the token service of {} ({realm_host}) rejected {}",
                        self.registry,
                        login.describe()
                    ),
                ),
            },
            StatusCode::FORBIDDEN => PullError::new(
                Category::AccessDenied,
                format!(
                    "the token service of {} ({realm_host}) refused a token for {scope}{}",
                    self.registry,
                    self.login_note()
                ),
            ),
            _ => PullError::new(
                Category::RegistryError,
                format!(
                    "the token service of {} ({realm_host}) answered {status}",
                    self.registry
                ),
            ),
        }
        .registry(&self.registry)
    }

    async fn read_token(
        &self,
        resp: reqwest::Response,
        realm_host: &str,
        budget: &Budget,
    ) -> Result<Token, PullError> {
        let cap = crate::body::AUTH_ANSWER.within(budget.total());
        let bytes = match crate::body::read_capped(resp, cap).await {
            Ok(bytes) => bytes,
            Err(e @ crate::body::BodyError::TooLarge(_)) => {
                return Err(PullError::new(
                    Category::RegistryError,
                    format!(
                        "the token service of {} ({realm_host}) answered with {}; Berth stopped reading it",
                        self.registry,
                        e.reason(cap)
                    ),
                )
                .registry(&self.registry));
            }
            Err(e) => {
                return Err(
                    self.unreachable(&format!("token service {realm_host}: {}", e.reason(cap)))
                );
            }
        };
        self.parse_token(&bytes, realm_host)
    }

    fn parse_token(&self, bytes: &[u8], realm_host: &str) -> Result<Token, PullError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let bad = || {
            PullError::new(
                Category::RegistryError,
                format!(
                    "the token service of {} ({realm_host}) answered without a token",
                    self.registry
                ),
            )
            .registry(&self.registry)
        };
        let answer: Answer = serde_json::from_slice(bytes).map_err(|_| bad())?;
        let value = answer
            .token
            .filter(|t| !t.is_empty())
            .or(answer.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(bad)?;
        let lifetime = answer
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        Ok(Token {
            value: SecretValue::new(value),
            renew_at: Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN.min(lifetime / 2)),
        })
    }
}

/// What to do when a registry wants credentials and none are configured.
pub(crate) fn no_credentials_hint(registry: &str) -> String {
    format!(
        "set DSTACK_DOCKER_USERNAME and DSTACK_DOCKER_PASSWORD{} (or the DSTACK_AWS_* variables for ECR); \
         if credentials are set, check that the registry they name is {registry}",
        if registry == crate::reference::DOCKER_HUB {
            String::new()
        } else {
            format!(" with DSTACK_DOCKER_REGISTRY={registry}")
        }
    )
}

/// A `Basic` header value, marked sensitive.
fn basic(user: &str, password: &SecretValue) -> HeaderValue {
    let raw = zeroize::Zeroizing::new(format!("{user}:{}", password.expose()));
    let encoded =
        zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(raw.as_bytes()));
    let mut v = HeaderValue::from_str(&format!("Basic {}", encoded.as_str()))
        .expect("base64 is a valid header");
    v.set_sensitive(true);
    v
}
