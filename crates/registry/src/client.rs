//! `RegistryClient`: one registry's HTTP conversation: endpoint, login,
//! auth challenges, tokens, retries and redirects.
//!
//! Written on `reqwest` rather than taken from `oci-client`: that crate has no
//! retry, no resume of a dropped blob download, no ECR login, keeps its own
//! copy of credentials in plain `String`s, and maps every failure to a few
//! coarse errors, while Berth's point is to name the cause of a failure.
//!
//! Auth follows the distribution spec: the first request goes out without
//! credentials (or with what the last challenge asked for); a `401` carries
//! `WWW-Authenticate`, `Basic` (htpasswd registries, ECR) or `Bearer realm=…,
//! service=…, scope=…` (Docker Hub, GHCR). Bearer tokens are fetched from the
//! realm with Basic credentials, cached per scope until shortly before they
//! expire, with one fetch in flight per scope. A `401` after a fresh login,
//! or ECR's `403` after a fresh ECR token, ends the request.
//!
//! Credentials go only to this registry's endpoint and its token realm;
//! redirects to another host (blob storage, CDNs) are followed without them.

use crate::credentials::DockerLogin;
use crate::ecr::EcrTokenSource;
use crate::error::{Category, PullError};
use crate::events::{EventSink, PullEvent};
use crate::ratelimit::{RateLimit, parse_retry_after};
use crate::retry::{Backoff, Next, RetryPolicy};
use crate::targets::{Refused, TargetGuard, refused_by_resolver, refused_error};
use base64::Engine;
use envseal::SecretValue;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use url::Url;

/// A token without `expires_in` is treated as living this long (the spec's
/// default is 60 s; GHCR sends none).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are renewed this long before they expire.
const TOKEN_MARGIN: Duration = Duration::from_secs(10);
const MAX_REDIRECTS: usize = 5;

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

    fn describe(&self) -> &'static str {
        match self {
            Login::Anonymous => "no credentials",
            Login::Password { source, .. } => source,
            Login::Ecr(_) => "the DSTACK_AWS_* credentials",
        }
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Parses `WWW-Authenticate`: `Basic realm="x"` or `Bearer realm="…",service="…",scope="…"`.
pub(crate) fn parse_challenge(value: &str) -> Option<(Challenge, HashMap<String, String>)> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let params = parse_auth_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some((Challenge::Basic, params)),
        "bearer" => {
            let realm = params.get("realm")?.clone();
            let service = params.get("service").cloned();
            Some((Challenge::Bearer { realm, service }, params))
        }
        _ => None,
    }
}

/// `parse_challenge` for the fuzz targets and property tests (`fuzz/`):
/// `None` if the value is refused, else the Bearer realm (`None` for Basic)
/// and every parameter. Not part of the crate's API.
#[doc(hidden)]
pub fn parse_challenge_for_fuzzing(
    value: &str,
) -> Option<(Option<String>, HashMap<String, String>)> {
    parse_challenge(value).map(|(challenge, params)| match challenge {
        Challenge::Basic => (None, params),
        Challenge::Bearer { realm, .. } => (Some(realm), params),
    })
}

fn parse_auth_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq]
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        rest = &rest[eq + 1..];
        let value;
        if let Some(r) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = r.char_indices();
            let mut end = r.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    _ => v.push(c),
                }
            }
            value = v;
            rest = &r[end.min(r.len())..];
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        out.insert(key, value);
    }
    out
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

/// How a response's status is treated by [`RegistryClient::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// Manifests and API calls.
    Manifest,
    /// Blob downloads: redirects to storage are followed without credentials.
    Blob,
}

/// Request counters, for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Manifest `HEAD` requests sent.
    pub manifest_heads: u64,
    /// Manifest `GET` requests sent (these count against Docker Hub's limit).
    pub manifest_gets: u64,
    /// Token requests sent to a realm.
    pub token_fetches: u64,
}

/// One registry, as seen through its endpoint.
pub(crate) struct RegistryClient {
    pub(crate) registry: String,
    base: Url,
    http: reqwest::Client,
    login: Login,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, Arc<tokio::sync::Mutex<TokenSlot>>>>,
    retry: RetryPolicy,
    events: EventSink,
    counts: Mutex<RequestCounts>,
    rate_limit: Mutex<Option<RateLimit>>,
    guard: Arc<TargetGuard>,
}

/// Why [`RegistryClient::send_following_redirects`] sent nothing (more).
enum HopError {
    /// The transport failed.
    Transport(reqwest::Error),
    /// The target (`what`: the endpoint or a redirect) is refused.
    Refused(&'static str, Refused),
}

impl RegistryClient {
    pub(crate) fn new(
        registry: String,
        base: Url,
        http: reqwest::Client,
        login: Login,
        retry: RetryPolicy,
        events: EventSink,
        guard: Arc<TargetGuard>,
    ) -> Self {
        Self {
            registry,
            base,
            http,
            login,
            challenge: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
            retry,
            events,
            counts: Mutex::new(RequestCounts::default()),
            rate_limit: Mutex::new(None),
            guard,
        }
    }

    pub(crate) fn is_anonymous(&self) -> bool {
        matches!(self.login, Login::Anonymous)
    }

    /// How this client authenticates, for reports.
    pub(crate) fn auth_description(&self) -> &'static str {
        if self.is_anonymous() {
            "anonymous"
        } else {
            "with credentials"
        }
    }

    pub(crate) fn counts(&self) -> RequestCounts {
        *self.counts.lock().unwrap()
    }

    pub(crate) fn rate_limit(&self) -> Option<RateLimit> {
        *self.rate_limit.lock().unwrap()
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let base_path = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base_path}{path}"));
        url
    }

    /// Sends `method path` for `repository`, handling auth, retries of
    /// transient failures and redirects. Returns the final response for any
    /// status that is not an auth or transient failure; the caller maps
    /// `404` and the like to its own words.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        repository: &str,
        headers: HeaderMap,
        expect: Expect,
    ) -> Result<Response, PullError> {
        let scope = format!("repository:{repository}:pull");
        let mut backoff = Backoff::new(self.retry);
        let mut reauthenticated = false;
        let mut ecr_renewed = false;
        // The credential the last attempt used, if the registry refused it.
        let mut refused: Option<SecretValue> = None;
        loop {
            let (auth, used) = self.authorization(&scope, refused.as_ref()).await?;
            if method == Method::GET && expect == Expect::Manifest {
                self.counts.lock().unwrap().manifest_gets += 1;
            } else if method == Method::HEAD {
                self.counts.lock().unwrap().manifest_heads += 1;
            }
            // A server that accepts and then sends nothing must not outlast
            // the budget: the attempt gets what is left of it.
            let result = match tokio::time::timeout(
                backoff.remaining(),
                self.send_following_redirects(method.clone(), self.url(path), &headers, auth),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => return Err(self.silent(backoff.budget(), backoff.attempt())),
            };
            let (retry_wait, reason) = match result {
                Err(HopError::Refused(what, refused)) => {
                    return Err(refused_error(&self.registry, what, &refused));
                }
                Err(HopError::Transport(err)) => {
                    if let Some(refused) = refused_by_resolver(&err) {
                        return Err(refused_error(&self.registry, "a request", &refused));
                    }
                    let (fatal, reason) = classify_transport_error(&err);
                    if fatal {
                        return Err(self.unreachable(&reason).hint(
                            "the registry's TLS certificate is not trusted: pass its CA with --ca-cert \
                             (or the sys-config CA list), or check the registry address",
                        ));
                    }
                    (None, reason)
                }
                Ok(resp) => {
                    self.note_rate_limit(resp.headers());
                    let status = resp.status();
                    match status {
                        StatusCode::UNAUTHORIZED => {
                            let challenge = resp
                                .headers()
                                .get(header::WWW_AUTHENTICATE)
                                .and_then(|v| v.to_str().ok())
                                .and_then(parse_challenge);
                            let body = error_codes(resp).await;
                            if !reauthenticated && let Some((challenge, _)) = challenge {
                                *self.challenge.lock().unwrap() = Some(challenge);
                                refused = used;
                                reauthenticated = true;
                                continue;
                            }
                            return Err(self.unauthorized(&body));
                        }
                        StatusCode::FORBIDDEN => {
                            let body = error_codes(resp).await;
                            if let Login::Ecr(_) = &self.login
                                && !ecr_renewed
                                && used.is_some()
                            {
                                // ECR answers an expired token with 403: get a new one once.
                                refused = used;
                                ecr_renewed = true;
                                continue;
                            }
                            return Err(PullError::new(
                                Category::AccessDenied,
                                format!(
                                    "{} refused access to {repository} ({}){}",
                                    self.registry,
                                    body.summary("403 Forbidden"),
                                    self.login_note()
                                ),
                            )
                            .registry(&self.registry));
                        }
                        StatusCode::TOO_MANY_REQUESTS => {
                            let wait = retry_after(resp.headers());
                            let body = error_codes(resp).await;
                            match backoff.next(wait) {
                                Next::RetryAfter(delay) => {
                                    self.emit_retry(
                                        path,
                                        backoff.attempt(),
                                        delay,
                                        "429 Too Many Requests",
                                    );
                                    tokio::time::sleep(delay).await;
                                    continue;
                                }
                                Next::GiveUp => return Err(self.rate_limited(wait, &body)),
                            }
                        }
                        s if s == StatusCode::REQUEST_TIMEOUT || s.is_server_error() => {
                            (retry_after(resp.headers()), format!("{status}"))
                        }
                        _ => return Ok(resp),
                    }
                }
            };
            match backoff.next(retry_wait) {
                Next::RetryAfter(delay) => {
                    self.emit_retry(path, backoff.attempt(), delay, &reason);
                    tokio::time::sleep(delay).await;
                }
                Next::GiveUp => {
                    return Err(if reason.starts_with(|c: char| c.is_ascii_digit()) {
                        PullError::new(
                            Category::RegistryError,
                            format!(
                                "{} kept failing: the last of {} attempts answered {reason}",
                                self.registry,
                                backoff.attempt()
                            ),
                        )
                        .registry(&self.registry)
                    } else {
                        self.unreachable(&format!(
                            "{reason} (after {} attempts)",
                            backoff.attempt()
                        ))
                    });
                }
            }
        }
    }

    async fn send_following_redirects(
        &self,
        method: Method,
        mut url: Url,
        headers: &HeaderMap,
        mut auth: Option<HeaderValue>,
    ) -> Result<Response, HopError> {
        let origin = url.origin();
        let mut what = "the endpoint";
        for _ in 0..=MAX_REDIRECTS {
            self.guard
                .check(&url)
                .await
                .map_err(|r| HopError::Refused(what, r))?;
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(a) = &auth {
                req = req.header(header::AUTHORIZATION, a.clone());
            }
            let resp = req.send().await.map_err(HopError::Transport)?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let Some(next) = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok())
            else {
                return Ok(resp);
            };
            if next.origin() != origin {
                // Another host (blob storage, a CDN): never send credentials there.
                auth = None;
            }
            url = next;
            what = "a redirect";
        }
        // Too many redirects: hand back what the last one answered.
        self.guard
            .check(&url)
            .await
            .map_err(|r| HopError::Refused(what, r))?;
        self.http
            .request(method, url)
            .headers(headers.clone())
            .send()
            .await
            .map_err(HopError::Transport)
    }

    /// The `Authorization` header for `scope` and the secret in it, fetching
    /// a token if needed. `refused` is a secret the registry just refused: a
    /// cached token or ECR password equal to it is renewed.
    async fn authorization(
        &self,
        scope: &str,
        refused: Option<&SecretValue>,
    ) -> Result<(Option<HeaderValue>, Option<SecretValue>), PullError> {
        let challenge = self.challenge.lock().unwrap().clone();
        match challenge {
            None => Ok((None, None)),
            Some(Challenge::Basic) => match &self.login {
                Login::Anonymous => Ok((None, None)),
                Login::Password {
                    username, password, ..
                } => Ok((Some(basic(username, password)), Some(password.clone()))),
                Login::Ecr(ecr) => {
                    let password = ecr.password(refused).await?;
                    Ok((Some(basic("AWS", &password)), Some(password)))
                }
            },
            Some(Challenge::Bearer { realm, service }) => {
                let token = self
                    .token(&realm, service.as_deref(), scope, refused)
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
        match self.fetch_token(realm, service, scope).await {
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

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
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
        self.guard
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
        let mut backoff = Backoff::new(self.retry);
        loop {
            let mut req = self.http.get(url.clone());
            match &self.login {
                Login::Anonymous => {}
                Login::Password {
                    username, password, ..
                } => {
                    req = req.header(header::AUTHORIZATION, basic(username, password));
                }
                Login::Ecr(ecr) => {
                    let password = ecr.password(None).await?;
                    req = req.header(header::AUTHORIZATION, basic("AWS", &password));
                }
            }
            self.counts.lock().unwrap().token_fetches += 1;
            let sent = match tokio::time::timeout(backoff.remaining(), req.send()).await {
                Ok(sent) => sent,
                Err(_) => {
                    return Err(self.unreachable(&format!(
                        "token service {realm_host} sent no answer within the retry budget of {}",
                        human_duration(backoff.budget())
                    )));
                }
            };
            let (wait, reason) = match sent {
                Err(err) => {
                    if let Some(refused) = refused_by_resolver(&err) {
                        return Err(refused_error(&self.registry, "the token service", &refused));
                    }
                    let (fatal, reason) = classify_transport_error(&err);
                    if fatal {
                        return Err(
                            self.unreachable(&format!("token service {realm_host}: {reason}"))
                        );
                    }
                    (None, reason)
                }
                Ok(resp) if resp.status().is_success() => {
                    let cap = crate::body::AUTH_ANSWER.within(self.retry.budget);
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
                            return Err(self.unreachable(&format!(
                                "token service {realm_host}: {}",
                                e.reason(cap)
                            )));
                        }
                    };
                    return self.parse_token(&bytes, &realm_host);
                }
                Ok(resp) => {
                    let status = resp.status();
                    match status {
                        StatusCode::UNAUTHORIZED => {
                            return Err(match &self.login {
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
                            }
                            .registry(&self.registry));
                        }
                        StatusCode::FORBIDDEN => {
                            return Err(PullError::new(
                                Category::AccessDenied,
                                format!(
                                    "the token service of {} ({realm_host}) refused a token for {scope}{}",
                                    self.registry,
                                    self.login_note()
                                ),
                            )
                            .registry(&self.registry));
                        }
                        s if s == StatusCode::TOO_MANY_REQUESTS
                            || s == StatusCode::REQUEST_TIMEOUT
                            || s.is_server_error() =>
                        {
                            (
                                retry_after(resp.headers()),
                                format!("token service answered {status}"),
                            )
                        }
                        _ => {
                            return Err(PullError::new(
                                Category::RegistryError,
                                format!(
                                    "the token service of {} ({realm_host}) answered {status}",
                                    self.registry
                                ),
                            )
                            .registry(&self.registry));
                        }
                    }
                }
            };
            match backoff.next(wait) {
                Next::RetryAfter(delay) => {
                    self.emit_retry("token", backoff.attempt(), delay, &reason);
                    tokio::time::sleep(delay).await;
                }
                Next::GiveUp => return Err(self.unreachable(&reason)),
            }
        }
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

    fn note_rate_limit(&self, headers: &HeaderMap) {
        let Some(limit) = headers.get("ratelimit-limit").and_then(|v| v.to_str().ok()) else {
            return;
        };
        let remaining = headers
            .get("ratelimit-remaining")
            .and_then(|v| v.to_str().ok());
        if let Ok(rl) = RateLimit::from_headers(limit, remaining) {
            let changed = self.rate_limit.lock().unwrap().replace(rl) != Some(rl);
            if changed {
                (self.events)(&PullEvent::RateLimit {
                    registry: self.registry.clone(),
                    limit: rl,
                });
            }
        }
    }

    fn emit_retry(&self, what: &str, attempt: u32, delay: Duration, reason: &str) {
        (self.events)(&PullEvent::Retrying {
            registry: self.registry.clone(),
            what: what.to_owned(),
            attempt,
            delay,
            reason: reason.to_owned(),
        });
    }

    fn login_note(&self) -> String {
        match self.login {
            Login::Anonymous => " without credentials".into(),
            _ => format!(" with {}", self.login.describe()),
        }
    }

    /// The budget ran out while waiting for an answer (a stalled server).
    pub(crate) fn silent(&self, budget: Duration, attempts: u32) -> PullError {
        self.unreachable(&format!(
            "no answer within the retry budget of {} (after {attempts} attempts; the server accepted \
             the connection and then sent nothing)",
            human_duration(budget)
        ))
        .hint(
            "the registry (or something in front of it) is stalled or overloaded: retry later, or \
             raise the retry budget (--max-retry-time); check the registry address and the network",
        )
    }

    fn unreachable(&self, reason: &str) -> PullError {
        PullError::new(
            Category::Unreachable,
            format!(
                "cannot reach {} at {}: {reason}",
                self.registry,
                self.base.as_str().trim_end_matches('/')
            ),
        )
        .registry(&self.registry)
    }

    fn unauthorized(&self, body: &ErrorBody) -> PullError {
        let insufficient = body
            .codes
            .iter()
            .any(|c| c == "DENIED" || c == "insufficient_scope");
        let err = match (&self.login, self.challenge.lock().unwrap().clone()) {
            (Login::Anonymous, _) => PullError::new(
                Category::AccessDenied,
                format!(
                    "{} requires credentials and none are configured for it ({})",
                    self.registry,
                    body.summary("401 Unauthorized")
                ),
            )
            .hint(no_credentials_hint(&self.registry)),
            (login, Some(Challenge::Bearer { .. })) => PullError::new(
                Category::AccessDenied,
                format!(
                    "{} accepted {} but the token does not allow pulling this image ({}){}",
                    self.registry,
                    login.describe(),
                    body.summary("401 Unauthorized"),
                    if insufficient {
                        ""
                    } else {
                        "; it may also not exist"
                    }
                ),
            ),
            (login, _) => PullError::new(
                Category::CredentialsRejected,
                format!(
                    "{} rejected {} ({})",
                    self.registry,
                    login.describe(),
                    body.summary("401 Unauthorized")
                ),
            ),
        };
        err.registry(&self.registry)
    }

    fn rate_limited(&self, wait: Option<Duration>, body: &ErrorBody) -> PullError {
        let wait_text = match wait {
            Some(w) => format!("; the registry asks to wait {}", human_duration(w)),
            None => String::new(),
        };
        let quota = self
            .rate_limit()
            .map(|rl| format!(" ({rl})"))
            .unwrap_or_default();
        let mut err = PullError::new(
            Category::RateLimited,
            format!(
                "{} is limiting pulls ({}){quota}{wait_text}",
                self.registry,
                body.summary("429 Too Many Requests")
            ),
        )
        .registry(&self.registry);
        err.retry_after = wait;
        let mut hint = match wait {
            Some(w) => format!("wait {} and retry", human_duration(w)),
            None => "wait for the limit to reset and retry".to_owned(),
        };
        if self.registry == crate::reference::DOCKER_HUB && self.is_anonymous() {
            hint.push_str(
                "; anonymous Docker Hub pulls share a low per-IP limit: set DSTACK_DOCKER_USERNAME \
                 and DSTACK_DOCKER_PASSWORD to pull with an account's higher limit",
            );
        }
        err.hint(hint)
    }
}

fn no_credentials_hint(registry: &str) -> String {
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

fn basic(user: &str, password: &SecretValue) -> HeaderValue {
    let raw = zeroize::Zeroizing::new(format!("{user}:{}", password.expose()));
    let encoded =
        zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(raw.as_bytes()));
    let mut v = HeaderValue::from_str(&format!("Basic {}", encoded.as_str()))
        .expect("base64 is a valid header");
    v.set_sensitive(true);
    v
}

/// `Retry-After` as a duration, if present and valid.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(v, SystemTime::now()).ok()
}

/// Whether a transport error is fatal (TLS trust) and a short reason.
/// The reason comes from the error chain, which holds no credentials.
pub(crate) fn classify_transport_error(err: &reqwest::Error) -> (bool, String) {
    let mut chain = Vec::new();
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = source {
        chain.push(e.to_string());
        source = e.source();
    }
    let text = chain.join(": ").to_lowercase();
    let tls = text.contains("certificate")
        || text.contains("unknownissuer")
        || text.contains("invalid peer");
    let reason = if tls {
        "the TLS certificate is not trusted".to_owned()
    } else if err.is_timeout() {
        "the connection timed out".to_owned()
    } else if text.contains("connection refused") {
        "connection refused".to_owned()
    } else if text.contains("dns error") || text.contains("failed to lookup") {
        "the host name does not resolve".to_owned()
    } else if text.contains("reset")
        || text.contains("closed")
        || text.contains("incomplete")
        || err.is_body()
    {
        "the connection was dropped".to_owned()
    } else if err.is_connect() {
        "cannot connect".to_owned()
    } else {
        chain
            .last()
            .cloned()
            .unwrap_or_else(|| "request failed".into())
    };
    (tls, reason)
}

/// The error codes of a distribution error body.
#[derive(Debug, Default)]
pub(crate) struct ErrorBody {
    pub(crate) codes: Vec<String>,
}

impl ErrorBody {
    pub(crate) fn summary(&self, status: &str) -> String {
        if self.codes.is_empty() {
            status.to_owned()
        } else {
            format!("{status}, {}", self.codes.join(", "))
        }
    }
}

/// Reads `{"errors":[{"code":...}]}` from a response (codes only: messages
/// and details are the registry's words and are not repeated).
pub(crate) async fn error_codes(resp: Response) -> ErrorBody {
    let challenge_error = resp
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_challenge)
        .and_then(|(_, p)| p.get("error").cloned());
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        code: String,
    }
    // Past the cap (or on a failure) the body is dropped unread: the status
    // alone then describes the error.
    let bytes = crate::body::read_capped(resp, crate::body::ERROR_BODY)
        .await
        .unwrap_or_default();
    let mut codes: Vec<String> = serde_json::from_slice::<Body>(&bytes)
        .map(|b| b.errors.into_iter().map(|e| e.code).collect())
        .unwrap_or_default();
    codes.retain(|c| c.len() <= 40 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    if let Some(e) = challenge_error {
        codes.push(e);
    }
    ErrorBody { codes }
}

/// `90 s`, `4 min`, `2 h 5 min`.
pub(crate) fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 120 {
        format!("{} s", s.max(1))
    } else if s < 7200 {
        format!("{} min", s.div_ceil(60))
    } else {
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (c, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            }
        );
        assert_eq!(p["scope"], "repository:library/busybox:pull");
        let (c, _) = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c, Challenge::Basic);
        let (_, p) = parse_challenge(
            r#"Bearer realm="https://x/t",service="s",scope="repository:a:pull",error="insufficient_scope""#,
        )
        .unwrap();
        assert_eq!(p["error"], "insufficient_scope");
        assert!(parse_challenge("Negotiate abc").is_none());
        assert!(parse_challenge("Bearer service=\"x\"").is_none());
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(Duration::from_secs(30)), "30 s");
        assert_eq!(human_duration(Duration::from_secs(600)), "10 min");
        assert_eq!(human_duration(Duration::from_secs(21600)), "6 h 0 min");
    }
}
