//! `RegistryClient`: one registry's HTTP conversation — what is sent, what
//! the answers mean, and the sentences a failure is told in.
//!
//! Written on `reqwest` rather than taken from `oci-client`: that crate has no
//! retry, no resume of a dropped blob download, no ECR login, keeps its own
//! copy of credentials in plain `String`s, and maps every failure to a few
//! coarse errors, while Berth's point is to name the cause of a failure.
//!
//! The parts, after containers/image: `crate::challenge` parses
//! `WWW-Authenticate`, `crate::auth` decides which credential a request
//! carries (Basic, Bearer tokens per scope, ECR), `crate::transport` sends
//! through redirects and classifies transport errors, [`crate::retry`] is
//! the one retry driver. This module is the loop that ties them together in
//! `RegistryClient::send`, and decides which answers are final: a `401`
//! after a fresh login, or ECR's `403` after a fresh ECR token, ends the
//! request; `408`, `429`, `5xx` and transport failures are retried within
//! the request's `Budget`.

use crate::auth::{Authenticator, Login, no_credentials_hint};
use crate::challenge::{Challenge, parse_challenge};
use crate::error::{Category, Hint, PullError};
use crate::events::{EventSink, PullEvent, retrying};
use crate::helpers::{human_duration, retry_after, unreachable};
use crate::ratelimit::RateLimit;
use crate::retry::Budget;
use crate::targets::{refused_by_resolver, refused_error};
use crate::transport::{HopError, Transport, classify};
use contract::SecretValue;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, Response, StatusCode};
use std::sync::Mutex;
use std::time::Duration;
use url::Url;

#[doc(hidden)]
pub use crate::challenge::parse_challenge_for_fuzzing;

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
    transport: Transport,
    auth: Authenticator,
    events: EventSink,
    counts: Mutex<RequestCounts>,
    rate_limit: Mutex<Option<RateLimit>>,
}

/// What an attempt of [`RegistryClient::send`] came to, short of a final
/// answer.
enum Failed {
    /// A `401` with a challenge: answer it (once), at once.
    Challenged,
    /// ECR's `403` to an ECR token: renew the token (once), at once.
    EcrRefused,
    /// A transport failure worth retrying.
    Transport(String),
    /// An answer worth retrying (`408`, `429`, `5xx`), with its
    /// `Retry-After`; for a `429`, its error codes (the limit is reported if
    /// the budget runs out).
    Status {
        status: StatusCode,
        wait: Option<Duration>,
        limited: Option<ErrorBody>,
    },
}

impl RegistryClient {
    pub(crate) fn new(
        registry: String,
        base: Url,
        transport: Transport,
        login: Login,
        events: EventSink,
    ) -> Self {
        let auth = Authenticator::new(
            registry.clone(),
            base.clone(),
            transport.clone(),
            login,
            events.clone(),
        );
        Self {
            registry,
            base,
            transport,
            auth,
            events,
            counts: Mutex::new(RequestCounts::default()),
            rate_limit: Mutex::new(None),
        }
    }

    pub(crate) fn is_anonymous(&self) -> bool {
        self.auth.is_anonymous()
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
        RequestCounts {
            token_fetches: self.auth.token_fetches(),
            ..*self.counts.lock().unwrap()
        }
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
    /// transient failures (within `budget`, which the caller may share with
    /// its own retries) and redirects. Returns the final response for any
    /// status that is not an auth or transient failure; the caller maps
    /// `404` and the like to its own words.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        repository: &str,
        headers: HeaderMap,
        expect: Expect,
        budget: &Budget,
    ) -> Result<Response, PullError> {
        let scope = format!("repository:{repository}:pull");
        // Each renewal is tried once: answering a challenge, and a fresh
        // ECR token after ECR's 403 (which may follow the first).
        let mut reauthenticated = false;
        let mut ecr_renewed = false;
        // The credential the last attempt used, if the registry refused it.
        let mut refused: Option<SecretValue> = None;
        loop {
            let (auth, used) = self
                .auth
                .authorization(&scope, refused.as_ref(), budget)
                .await?;
            if method == Method::GET && expect == Expect::Manifest {
                self.counts.lock().unwrap().manifest_gets += 1;
            } else if method == Method::HEAD {
                self.counts.lock().unwrap().manifest_heads += 1;
            }
            // A server that accepts and then sends nothing must not outlast
            // the budget: the attempt gets what is left of it.
            let sent = self
                .transport
                .send(method.clone(), self.url(path), &headers, auth);
            let Some(result) = budget.bounded(sent).await else {
                return Err(self.silent(budget.total(), budget.attempt()));
            };
            let failed = match result {
                Ok(resp) => match self
                    .judge(
                        resp,
                        repository,
                        reauthenticated,
                        ecr_renewed,
                        used.is_some(),
                    )
                    .await?
                {
                    Ok(resp) => return Ok(resp),
                    Err(failed) => failed,
                },
                Err(hop) => self.transport_failed(hop)?,
            };
            let wait = match &failed {
                Failed::Challenged => {
                    refused = used;
                    reauthenticated = true;
                    continue;
                }
                Failed::EcrRefused => {
                    refused = used;
                    ecr_renewed = true;
                    continue;
                }
                Failed::Transport(_) => None,
                Failed::Status { wait, .. } => *wait,
            };
            let reason = match &failed {
                Failed::Status { status, .. } => status.to_string(),
                Failed::Transport(reason) => reason.clone(),
                Failed::Challenged | Failed::EcrRefused => unreachable!("handled above"),
            };
            let on_retry = |attempt, delay| {
                retrying(&self.events, &self.registry, path, attempt, delay, &reason)
            };
            if let Err(gave_up) = budget.retry(wait, on_retry).await {
                return Err(match failed {
                    Failed::Status {
                        limited: Some(body),
                        wait,
                        ..
                    } => self.rate_limited(wait, &body),
                    Failed::Status { .. } => PullError::new(
                        Category::RegistryError,
                        format!(
                            "{} kept failing: the last of {} attempts answered {reason}",
                            self.registry, gave_up.attempts
                        ),
                    )
                    .registry(&self.registry),
                    _ => {
                        self.unreachable(&format!("{reason} (after {} attempts)", gave_up.attempts))
                    }
                });
            }
        }
    }

    /// A transport failure: fatal (refused target, untrusted certificate)
    /// or transient.
    fn transport_failed(&self, hop: HopError) -> Result<Failed, PullError> {
        match hop {
            HopError::Refused(what, refused) => Err(refused_error(&self.registry, what, &refused)),
            HopError::Transport(err) => {
                if let Some(refused) = refused_by_resolver(&err) {
                    return Err(refused_error(&self.registry, "a request", &refused));
                }
                let (failure, reason) = classify(&err);
                if failure.is_fatal() {
                    return Err(self.unreachable(&reason).with_hint(Hint::TrustCa));
                }
                Ok(Failed::Transport(reason))
            }
        }
    }

    /// What an answer means: `Ok(Ok(resp))` final, `Ok(Err(_))` try again,
    /// `Err` a failure that retrying cannot mend. `reauthenticated`,
    /// `ecr_renewed`: that renewal was made already; `had_credential`: the
    /// attempt carried one.
    async fn judge(
        &self,
        resp: Response,
        repository: &str,
        reauthenticated: bool,
        ecr_renewed: bool,
        had_credential: bool,
    ) -> Result<Result<Response, Failed>, PullError> {
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
                    self.auth.challenged(challenge);
                    return Ok(Err(Failed::Challenged));
                }
                Err(self.unauthorized(&body))
            }
            StatusCode::FORBIDDEN => {
                let body = error_codes(resp).await;
                if let Login::Ecr(_) = self.auth.login()
                    && !ecr_renewed
                    && had_credential
                {
                    // ECR answers an expired token with 403: get a new one once.
                    return Ok(Err(Failed::EcrRefused));
                }
                Err(PullError::new(
                    Category::AccessDenied,
                    format!(
                        "{} refused access to {repository} ({}){}",
                        self.registry,
                        body.summary("403 Forbidden"),
                        self.auth.login_note()
                    ),
                )
                .registry(&self.registry))
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let wait = retry_after(resp.headers());
                let body = error_codes(resp).await;
                Ok(Err(Failed::Status {
                    status,
                    wait,
                    limited: Some(body),
                }))
            }
            s if s == StatusCode::REQUEST_TIMEOUT || s.is_server_error() => {
                Ok(Err(Failed::Status {
                    status,
                    wait: retry_after(resp.headers()),
                    limited: None,
                }))
            }
            _ => Ok(Ok(resp)),
        }
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

    /// The budget ran out while waiting for an answer (a stalled server).
    pub(crate) fn silent(&self, budget: Duration, attempts: u32) -> PullError {
        self.unreachable(&format!(
            "no answer within the retry budget of {} (after {attempts} attempts; the server accepted \
             the connection and then sent nothing)",
            human_duration(budget)
        ))
        .with_hint(Hint::RaiseRetryBudget)
    }

    fn unreachable(&self, reason: &str) -> PullError {
        unreachable(&self.registry, &self.base, reason)
    }

    fn unauthorized(&self, body: &ErrorBody) -> PullError {
        let insufficient = body
            .codes
            .iter()
            .any(|c| c == "DENIED" || c == "insufficient_scope");
        let err = match (self.auth.login(), self.auth.challenge()) {
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
    if let Some(e) = challenge_error {
        codes.push(e);
    }
    // Codes end up in messages: only what looks like a code, from the body
    // or from the challenge's `error=` alike (both are the registry's text).
    codes.retain(|c| {
        !c.is_empty() && c.len() <= 40 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    });
    ErrorBody { codes }
}
