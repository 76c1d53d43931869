//! AWS ECR login: `GetAuthorizationToken`, signed with SigV4.
//!
//! ECR registries answer with a Basic challenge whose password is the 12-hour
//! token from `GetAuthorizationToken` (`authorizationToken` is base64
//! `AWS:password`). The request is signed with the AWS-maintained `aws-sigv4`
//! crate; no AWS CLI or SDK runtime is involved. The token lives in memory
//! only and is renewed at half its lifetime, or when the registry refuses it
//! (an expired ECR token gets `403`, not `401`): both in
//! `EcrTokenSource::password`; the `403` is recognised in `client::send`.
//!
//! The API endpoint is `https://api.ecr.REGION.amazonaws.com/`, or the
//! override the AWS SDKs read from `AWS_ENDPOINT_URL_ECR` / `AWS_ENDPOINT_URL`
//! (see [`endpoint_override`]).

use crate::credentials::EcrLogin;
use crate::error::{Category, PullError};
use crate::retry::Budget;
use crate::targets::{refused_by_resolver, refused_error};
use crate::transport::{Transport, classify};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use base64::Engine;
use contract::SecretValue;
use std::time::{Duration, Instant, SystemTime};
use url::Url;

const TARGET: &str = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken";
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// The ECR API endpoint override from the AWS SDK variables, looked up with
/// `get` (the process env, or a decrypted env): `AWS_ENDPOINT_URL_ECR`, then
/// `AWS_ENDPOINT_URL`.
pub fn endpoint_override(get: impl Fn(&str) -> Option<String>) -> Result<Option<Url>, PullError> {
    for name in ["AWS_ENDPOINT_URL_ECR", "AWS_ENDPOINT_URL"] {
        if let Some(v) = get(name).filter(|v| !v.is_empty()) {
            let url = Url::parse(&v)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    PullError::config(format!("{name} is not an http:// or https:// URL"))
                })?;
            return Ok(Some(url));
        }
    }
    Ok(None)
}

struct CachedToken {
    password: SecretValue,
    renew_at: Instant,
}

/// Gets and caches the ECR password for one [`EcrLogin`].
pub(crate) struct EcrTokenSource {
    login: EcrLogin,
    endpoint: Url,
    transport: Transport,
    cached: tokio::sync::Mutex<Slot>,
}

/// The cached token, and the last failed fetch.
#[derive(Default)]
struct Slot {
    token: Option<CachedToken>,
    /// When the last fetch failed and how: callers that were waiting for
    /// that fetch get its answer instead of starting one each (20 pulls
    /// queued behind a throttled or unreachable API would otherwise spend
    /// the retry budget 20 times over, one after another).
    failed: Option<(Instant, PullError)>,
}

impl std::fmt::Debug for EcrTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcrTokenSource")
            .field("registry", &self.login.registry)
            .field("endpoint", &self.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

impl EcrTokenSource {
    pub(crate) fn new(login: EcrLogin, endpoint: Option<Url>, transport: Transport) -> Self {
        let endpoint = endpoint.unwrap_or_else(|| {
            let suffix = if login.registry.ends_with(".amazonaws.com.cn") {
                "amazonaws.com.cn"
            } else {
                "amazonaws.com"
            };
            Url::parse(&format!("https://api.ecr.{}.{suffix}/", login.region))
                .expect("valid region host")
        });
        Self {
            login,
            endpoint,
            transport,
            cached: tokio::sync::Mutex::new(Slot::default()),
        }
    }

    /// The registry password: cached until half its lifetime, renewed when
    /// `refused` (the password the registry just refused) is the cached one.
    /// One fetch in flight: concurrent callers wait for it and share its
    /// answer, a token or an error. The fetch runs within `budget`, the
    /// budget of the request that needs the token.
    ///
    /// This is where the ECR token is renewed.
    pub(crate) async fn password(
        &self,
        refused: Option<&SecretValue>,
        budget: &Budget,
    ) -> Result<SecretValue, PullError> {
        let asked = Instant::now();
        let mut slot = self.cached.lock().await;
        if let Some(t) = slot.token.as_ref()
            && Instant::now() < t.renew_at
            && Some(&t.password) != refused
        {
            return Ok(t.password.clone());
        }
        if let Some((at, err)) = &slot.failed
            && *at >= asked
        {
            return Err(err.clone());
        }
        match self.fetch(budget).await {
            Ok(token) => {
                let password = token.password.clone();
                slot.token = Some(token);
                slot.failed = None;
                Ok(password)
            }
            Err(e) => {
                slot.failed = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    fn error(&self, category: Category, message: String) -> PullError {
        PullError::new(category, message).registry(&self.login.registry)
    }

    async fn fetch(&self, budget: &Budget) -> Result<CachedToken, PullError> {
        let host = self.endpoint.host_str().unwrap_or("").to_owned();
        self.transport
            .guard
            .check(&self.endpoint)
            .await
            .map_err(|r| refused_error(&self.login.registry, "the ECR API", &r))?;
        loop {
            let req = self.signed_request()?;
            // Bounded by what is left of the budget (a stalled API).
            let Some(sent) = budget.bounded(req.send()).await else {
                return Err(self.error(
                    Category::Unreachable,
                    format!(
                        "the ECR API at {host} sent no answer within the retry budget of {}",
                        crate::helpers::human_duration(budget.total())
                    ),
                ));
            };
            let (wait, reason) = match sent {
                Err(e) => {
                    if let Some(refused) = refused_by_resolver(&e) {
                        return Err(refused_error(&self.login.registry, "the ECR API", &refused));
                    }
                    let (failure, reason) = classify(&e);
                    if failure.is_fatal() {
                        return Err(self.error(
                            Category::Unreachable,
                            format!("cannot reach the ECR API at {host}: {reason}"),
                        ));
                    }
                    (None, Reason::other(reason))
                }
                Ok(resp) => {
                    let status = resp.status();
                    let wait = crate::helpers::retry_after(resp.headers());
                    if status.is_success() {
                        let cap = crate::body::AUTH_ANSWER.within(budget.total());
                        let body = crate::body::read_capped(resp, cap).await.map_err(|e| match e {
                            crate::body::BodyError::TooLarge(_) => self.error(
                                Category::RegistryError,
                                format!(
                                    "the ECR API ({host}) answered GetAuthorizationToken with {}; Berth stopped reading it",
                                    e.reason(cap)
                                ),
                            ),
                            _ => self.error(
                                Category::Unreachable,
                                format!(
                                    "cannot read the answer of the ECR API at {host}: {}",
                                    e.reason(cap)
                                ),
                            ),
                        })?;
                        return self.parse(&body, &host);
                    }
                    // Past the cap the error body is dropped: the status decides.
                    let body = crate::body::read_capped(resp, crate::body::ERROR_BODY)
                        .await
                        .unwrap_or_default();
                    let kind = aws_error_type(&body);
                    match kind.as_str() {
                        "ThrottlingException"
                        | "ServiceUnavailableException"
                        | "InternalFailure" => (
                            wait,
                            Reason {
                                text: format!("ECR API answered {kind}"),
                                throttled: kind == "ThrottlingException",
                            },
                        ),
                        _ if status.is_server_error() => {
                            (wait, Reason::other(format!("ECR API answered {status}")))
                        }
                        "UnrecognizedClientException"
                        | "InvalidClientTokenId"
                        | "InvalidSignatureException"
                        | "SignatureDoesNotMatch"
                        | "ExpiredTokenException"
                        | "IncompleteSignature" => {
                            return Err(self.error(
                                Category::CredentialsRejected,
                                format!(
                                    "the ECR API ({host}) rejected the DSTACK_AWS_* credentials ({kind})"
                                ),
                            )
                            .hint(
                                "check DSTACK_AWS_ACCESS_KEY_ID and DSTACK_AWS_SECRET_ACCESS_KEY (and \
                                 DSTACK_AWS_SESSION_TOKEN for temporary credentials): valid, not expired, \
                                 and for the account that owns the registry",
                            ));
                        }
                        "AccessDeniedException" => {
                            return Err(self.error(
                                Category::AccessDenied,
                                format!("the ECR API ({host}) denied GetAuthorizationToken ({kind})"),
                            )
                            .hint("allow ecr:GetAuthorizationToken (and ecr:BatchGetImage, ecr:GetDownloadUrlForLayer) in the IAM policy of these credentials"));
                        }
                        _ => {
                            return Err(self.error(
                                Category::RegistryError,
                                format!(
                                    "the ECR API ({host}) answered {status}{}",
                                    if kind.is_empty() {
                                        String::new()
                                    } else {
                                        format!(" ({kind})")
                                    }
                                ),
                            ));
                        }
                    }
                }
            };
            if let Err(gave_up) = budget.retry(wait, |_, _| {}).await {
                return Err(if reason.throttled {
                    self.error(
                        Category::RateLimited,
                        format!(
                            "the ECR API ({host}) kept throttling GetAuthorizationToken \
                             (ThrottlingException, {} attempts)",
                            gave_up.attempts
                        ),
                    )
                    .hint(
                        "AWS limits GetAuthorizationToken per account and region (about 20 \
                         calls a second): wait a moment and retry, or start fewer boots of this \
                         account at once",
                    )
                } else {
                    self.error(
                        Category::Unreachable,
                        format!("cannot get an ECR token from {host}: {}", reason.text),
                    )
                });
            }
        }
    }

    fn signed_request(&self) -> Result<reqwest::RequestBuilder, PullError> {
        let body: &[u8] = b"{}";
        let identity = Credentials::new(
            self.login.access_key_id.clone(),
            self.login.secret_access_key.expose().to_owned(),
            self.login
                .session_token
                .as_ref()
                .map(|t| t.expose().to_owned()),
            None,
            "berth-dstack-env",
        )
        .into();
        let settings = SigningSettings::default();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.login.region)
            .name("ecr")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|_| PullError::config("cannot build the ECR request signature"))?
            .into();
        let headers = [("content-type", CONTENT_TYPE), ("x-amz-target", TARGET)];
        let signable = SignableRequest::new(
            "POST",
            self.endpoint.as_str(),
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .map_err(|_| {
            PullError::config("cannot sign the ECR request: the endpoint URL is not valid")
        })?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|_| PullError::config("cannot sign the ECR request"))?
            .into_parts();
        let mut req = self
            .transport
            .http
            .post(self.endpoint.clone())
            .header("content-type", CONTENT_TYPE)
            .header("x-amz-target", TARGET)
            .body(body.to_vec());
        for (name, value) in instructions.headers() {
            let mut v = reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| PullError::config("cannot sign the ECR request"))?;
            if name.eq_ignore_ascii_case("authorization")
                || name.eq_ignore_ascii_case("x-amz-security-token")
            {
                v.set_sensitive(true);
            }
            req = req.header(name, v);
        }
        Ok(req)
    }

    fn parse(&self, body: &[u8], host: &str) -> Result<CachedToken, PullError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            authorization_data: Vec<Data>,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Data {
            authorization_token: String,
            expires_at: Option<f64>,
        }
        let bad = || {
            self.error(
                Category::RegistryError,
                format!(
                    "the ECR API ({host}) answered GetAuthorizationToken without a usable token"
                ),
            )
        };
        let answer: Answer = serde_json::from_slice(body).map_err(|_| bad())?;
        let data = answer
            .authorization_data
            .into_iter()
            .next()
            .ok_or_else(bad)?;
        let token = zeroize::Zeroizing::new(data.authorization_token);
        let decoded = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(token.as_bytes())
                .map_err(|_| bad())?,
        );
        let text = std::str::from_utf8(&decoded).map_err(|_| bad())?;
        let password = text.strip_prefix("AWS:").ok_or_else(bad)?;
        let now_unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        // An expiry that is not in the future (clock skew, or a test server's
        // fixed date) is treated as unknown: ECR's documented 12 hours, with
        // the registry's 403 as the backstop that forces a renewal.
        let lifetime = data
            .expires_at
            .map(|t| t - now_unix)
            .filter(|secs| *secs > 60.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(Duration::from_secs(12 * 3600));
        Ok(CachedToken {
            password: SecretValue::from(password),
            renew_at: Instant::now() + lifetime / 2,
        })
    }
}

/// Why a `GetAuthorizationToken` attempt failed, transiently.
struct Reason {
    text: String,
    /// AWS throttled the call: reported as rate limiting when the budget
    /// runs out.
    throttled: bool,
}

impl Reason {
    fn other(text: String) -> Self {
        Self {
            text,
            throttled: false,
        }
    }
}

/// The `__type` of an AWS JSON error body, without its namespace prefix.
fn aws_error_type(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct E {
        #[serde(rename = "__type")]
        kind: Option<String>,
    }
    let kind = serde_json::from_slice::<E>(body)
        .ok()
        .and_then(|e| e.kind)
        .unwrap_or_default();
    let kind = kind.rsplit('#').next().unwrap_or("").to_owned();
    if kind.len() <= 64 && kind.bytes().all(|b| b.is_ascii_alphanumeric()) {
        kind
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_override_follows_sdk_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(endpoint_override(env(&[])).unwrap(), None);
        assert_eq!(
            endpoint_override(env(&[
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:1/"),
                ("AWS_ENDPOINT_URL_ECR", "http://127.0.0.1:2/")
            ]))
            .unwrap()
            .unwrap()
            .as_str(),
            "http://127.0.0.1:2/"
        );
        assert!(endpoint_override(env(&[("AWS_ENDPOINT_URL", "nope")])).is_err());
    }

    #[test]
    fn error_types() {
        assert_eq!(
            aws_error_type(br#"{"__type":"com.amazon#UnrecognizedClientException","message":"x"}"#),
            "UnrecognizedClientException"
        );
        assert_eq!(aws_error_type(b"garbage"), "");
    }
}
