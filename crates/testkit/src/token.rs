//! An in-process Docker token server (the "realm" of a `Bearer` challenge),
//! compatible with what distribution 2.8 verifies.
//!
//! What distribution 2.8.2 does with the tokens (checked by
//! `tests/token.rs`):
//! - it verifies the JWS `x5c` chain against `auth.token.rootcertbundle`,
//!   then `iss` == `auth.token.issuer`, `aud` (a **string** in 2.8) ==
//!   `auth.token.service`, and `nbf`/`exp` with a fixed **60 s leeway**;
//! - a valid token whose `access` does not cover the request (a user denied
//!   the repository, or a pull-only token used to push) gets **401**
//!   `UNAUTHORIZED` (`"authentication required"`) with
//!   `WWW-Authenticate: Bearer realm=...,service=...,scope="repository:NAME:pull",error="insufficient_scope"`,
//!   not 403/DENIED: the same answer as for a missing token, like Docker Hub's
//!   "pull access denied". An invalid/expired token gets 401 with
//!   `error="invalid_token"`.
//!
//! As Docker Hub does, the issuer answers a request for a repository the user
//! may not access with a token whose `access` lacks it (not an error); only
//! wrong credentials get 401 from the issuer.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::pki::{IssuedCert, TestCa};
use crate::util::{self, BgRuntime, RespBody};

/// Which JSON field(s) carry the token in the issuer's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenField {
    /// `{"token": ...}` only.
    Token,
    /// `{"access_token": ...}` only (OAuth2 style).
    AccessToken,
    /// Both fields, same value (what Docker Hub answers).
    Both,
}

/// One grant: a repository pattern and the actions allowed on it.
///
/// The pattern is an exact repository name, `prefix/*` (anything under the
/// prefix), or `*` (everything). Actions are `pull`, `push`, `delete` or `*`.
#[derive(Clone, Debug)]
pub struct Grant {
    /// Repository name pattern.
    pub repository: String,
    /// Allowed actions.
    pub actions: Vec<String>,
}

#[derive(Clone, Debug)]
struct User {
    password: String,
    grants: Vec<Grant>,
}

/// A token request as the issuer saw it.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// HTTP method (`GET`, or `POST` for the OAuth2 password grant).
    pub method: String,
    /// Authenticated user name (`None` for anonymous requests).
    pub user: Option<String>,
    /// The `service` parameter.
    pub service: Option<String>,
    /// The `scope` parameters, as sent.
    pub scopes: Vec<String>,
    /// The status the issuer answered.
    pub status: u16,
    /// What the token grants: `(repository, actions)`.
    pub granted: Vec<(String, Vec<String>)>,
}

#[derive(Clone)]
struct Settings {
    users: HashMap<String, User>,
    anonymous: Option<Vec<Grant>>,
    service: String,
    issuer: String,
    field: TokenField,
    expires_in: bool,
    lifetime: Duration,
    delay: Duration,
    exact_expiry: bool,
}

/// Builder for [`TokenIssuer`].
pub struct TokenIssuerBuilder {
    s: Settings,
}

fn grants(list: &[(&str, &[&str])]) -> Vec<Grant> {
    list.iter()
        .map(|(r, a)| Grant {
            repository: r.to_string(),
            actions: a.iter().map(|s| s.to_string()).collect(),
        })
        .collect()
}

impl TokenIssuerBuilder {
    /// Adds a user with its password and grants, e.g.
    /// `.user("alice", "pw", &[("team/app", &["pull", "push"])])`.
    pub fn user(mut self, name: &str, password: &str, grants_: &[(&str, &[&str])]) -> Self {
        self.s.users.insert(
            name.to_string(),
            User {
                password: password.to_string(),
                grants: grants(grants_),
            },
        );
        self
    }

    /// Lets requests without credentials get tokens with these grants
    /// (default: anonymous requests get a token that grants nothing).
    pub fn anonymous(mut self, grants_: &[(&str, &[&str])]) -> Self {
        self.s.anonymous = Some(grants(grants_));
        self
    }

    /// Rejects requests without credentials with 401 (default: they get a
    /// token granting nothing, as Docker Hub does).
    pub fn require_credentials(mut self) -> Self {
        self.s.anonymous = None;
        self
    }

    /// The service name (`aud`, and the registry's `auth.token.service`).
    /// Default `berth-test-registry`.
    pub fn service(mut self, service: &str) -> Self {
        self.s.service = service.to_string();
        self
    }

    /// The issuer name (`iss`, and the registry's `auth.token.issuer`).
    pub fn issuer_name(mut self, issuer: &str) -> Self {
        self.s.issuer = issuer.to_string();
        self
    }

    /// Which field carries the token (default [`TokenField::Token`]).
    pub fn token_field(mut self, field: TokenField) -> Self {
        self.s.field = field;
        self
    }

    /// Whether answers carry `expires_in` (default true). `false` mimics
    /// GHCR's opaque tokens.
    pub fn expires_in(mut self, include: bool) -> Self {
        self.s.expires_in = include;
        self
    }

    /// Token lifetime (default 300 s; `expires_in` and `exp` follow it).
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.s.lifetime = lifetime;
        self
    }

    /// Delays every answer (to make concurrent fetches observable).
    pub fn response_delay(mut self, delay: Duration) -> Self {
        self.s.delay = delay;
        self
    }

    /// If true, `exp` is set 60 s earlier than the lifetime so that
    /// distribution (which accepts tokens up to 60 s past `exp`) rejects the
    /// token right when `lifetime` has passed. Default false (honest claims).
    pub fn exact_expiry(mut self, exact: bool) -> Self {
        self.s.exact_expiry = exact;
        self
    }

    /// Starts the issuer on a free 127.0.0.1 port.
    pub fn start(self) -> TokenIssuer {
        TokenIssuer::start_with(self.s)
    }
}

#[derive(Default)]
struct Counters {
    log: Vec<TokenRequest>,
    per_scope: HashMap<String, usize>,
    in_flight: HashMap<String, usize>,
    max_in_flight: HashMap<String, usize>,
    in_flight_total: usize,
    max_in_flight_total: usize,
}

struct Shared {
    settings: Mutex<Settings>,
    counters: Mutex<Counters>,
    signer: IssuedCert,
    key: ring::signature::EcdsaKeyPair,
}

/// A running token issuer (stopped on drop).
///
/// Serves `GET /token?service=S&scope=repository:NAME:pull[,push]` with HTTP
/// Basic credentials, and `POST /token` (OAuth2 `grant_type=password` form).
/// Tokens are ES256 JWTs whose `x5c` holds a signing certificate issued by
/// the issuer's own CA ([`TokenIssuer::root_cert_pem`]), which is what a
/// [`crate::Registry`] with token auth trusts.
pub struct TokenIssuer {
    addr: SocketAddr,
    ca: TestCa,
    shared: Arc<Shared>,
    _rt: BgRuntime,
}

impl TokenIssuer {
    /// A builder with defaults: no users, anonymous gets empty tokens,
    /// `token` field, `expires_in` included, 300 s lifetime.
    pub fn builder() -> TokenIssuerBuilder {
        TokenIssuerBuilder {
            s: Settings {
                users: HashMap::new(),
                anonymous: Some(Vec::new()),
                service: "berth-test-registry".into(),
                issuer: "berth-testkit-token-issuer".into(),
                field: TokenField::Token,
                expires_in: true,
                lifetime: Duration::from_secs(300),
                delay: Duration::ZERO,
                exact_expiry: false,
            },
        }
    }

    fn start_with(settings: Settings) -> Self {
        let ca = TestCa::new("berth testkit token CA");
        let signer = ca.issue_signing_cert("berth testkit token signer");
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &signer.key_pkcs8_der,
            &rng,
        )
        .expect("load signing key");
        let shared = Arc::new(Shared {
            settings: Mutex::new(settings),
            counters: Mutex::new(Counters::default()),
            signer,
            key,
        });
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind token issuer");
        let addr = listener.local_addr().expect("local addr");
        let rt = BgRuntime::start("token-issuer");
        let sh = shared.clone();
        util::serve_http(rt.handle(), listener, move |req, _peer| {
            let sh = sh.clone();
            async move { handle(sh, req).await }
        });
        TokenIssuer {
            addr,
            ca,
            shared,
            _rt: rt,
        }
    }

    /// The realm URL, `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// `127.0.0.1:PORT`.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// The service name (`aud`).
    pub fn service(&self) -> String {
        self.shared.settings.lock().unwrap().service.clone()
    }

    /// The issuer name (`iss`).
    pub fn issuer_name(&self) -> String {
        self.shared.settings.lock().unwrap().issuer.clone()
    }

    /// The root certificate (PEM) that verifies the tokens' `x5c` chain;
    /// distribution's `auth.token.rootcertbundle`.
    pub fn root_cert_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// Adds or replaces a user at runtime.
    pub fn set_user(&self, name: &str, password: &str, grants_: &[(&str, &[&str])]) {
        self.shared.settings.lock().unwrap().users.insert(
            name.to_string(),
            User {
                password: password.to_string(),
                grants: grants(grants_),
            },
        );
    }

    /// Removes a user at runtime (its credentials then get 401).
    pub fn remove_user(&self, name: &str) {
        self.shared.settings.lock().unwrap().users.remove(name);
    }

    /// Changes the token lifetime at runtime.
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.shared.settings.lock().unwrap().lifetime = lifetime;
    }

    /// Changes the answer delay at runtime.
    pub fn set_response_delay(&self, delay: Duration) {
        self.shared.settings.lock().unwrap().delay = delay;
    }

    /// Number of token requests answered so far (any status).
    pub fn request_count(&self) -> usize {
        self.shared.counters.lock().unwrap().log.len()
    }

    /// Number of token requests whose scopes, joined by a space, equal `scope`
    /// (e.g. `repository:team/app:pull`).
    pub fn request_count_for_scope(&self, scope: &str) -> usize {
        let c = self.shared.counters.lock().unwrap();
        c.per_scope.get(scope).copied().unwrap_or(0)
    }

    /// Highest number of simultaneous requests seen for `scope` (same key as
    /// [`TokenIssuer::request_count_for_scope`]).
    pub fn max_in_flight_for_scope(&self, scope: &str) -> usize {
        let c = self.shared.counters.lock().unwrap();
        c.max_in_flight.get(scope).copied().unwrap_or(0)
    }

    /// Highest number of simultaneous requests seen overall.
    pub fn max_in_flight(&self) -> usize {
        self.shared.counters.lock().unwrap().max_in_flight_total
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared.counters.lock().unwrap().log.clone()
    }

    /// Clears the request log and counters.
    pub fn reset_counters(&self) {
        let mut c = self.shared.counters.lock().unwrap();
        let in_flight = std::mem::take(&mut c.in_flight);
        let total = c.in_flight_total;
        *c = Counters::default();
        c.in_flight = in_flight;
        c.in_flight_total = total;
    }

    /// Mints a token directly (not counted), for `subject` with `access`
    /// entries `(repository, actions)`, valid for `lifetime` from now (see
    /// also [`TokenIssuer::mint_expired`]).
    pub fn mint(&self, subject: &str, access: &[(&str, &[&str])], lifetime: Duration) -> String {
        let access: Vec<(String, Vec<String>)> = access
            .iter()
            .map(|(r, a)| (r.to_string(), a.iter().map(|s| s.to_string()).collect()))
            .collect();
        let s = self.shared.settings.lock().unwrap().clone();
        let now = util::now_unix();
        sign(
            &self.shared,
            &s,
            subject,
            &s.service,
            &access,
            now,
            now + lifetime.as_secs(),
        )
    }

    /// Mints a token that distribution rejects as expired (exp 2 minutes ago,
    /// beyond its 60 s leeway).
    pub fn mint_expired(&self, subject: &str, access: &[(&str, &[&str])]) -> String {
        let access: Vec<(String, Vec<String>)> = access
            .iter()
            .map(|(r, a)| (r.to_string(), a.iter().map(|s| s.to_string()).collect()))
            .collect();
        let s = self.shared.settings.lock().unwrap().clone();
        let now = util::now_unix();
        sign(
            &self.shared,
            &s,
            subject,
            &s.service,
            &access,
            now - 600,
            now - 120,
        )
    }
}

fn pattern_matches(pattern: &str, name: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return name.starts_with(prefix);
    }
    pattern == name
}

/// `type:name:actions` → (type, name, actions); the name may contain ':'.
fn parse_scope(scope: &str) -> Option<(String, String, Vec<String>)> {
    let (ty, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    Some((
        ty.to_string(),
        name.to_string(),
        actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(|a| a.to_string())
            .collect(),
    ))
}

fn grant_for(grants: &[Grant], name: &str, requested: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for act in requested {
        let ok = grants.iter().any(|g| {
            pattern_matches(&g.repository, name) && g.actions.iter().any(|a| a == act || a == "*")
        });
        if ok && !out.contains(act) {
            out.push(act.clone());
        }
    }
    out
}

fn sign(
    sh: &Shared,
    s: &Settings,
    subject: &str,
    audience: &str,
    access: &[(String, Vec<String>)],
    iat: u64,
    exp: u64,
) -> String {
    let header = json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [util::b64(&sh.signer.cert_der)],
    });
    let access_json: Vec<Value> = access
        .iter()
        .map(|(name, actions)| json!({"type": "repository", "name": name, "actions": actions}))
        .collect();
    let claims = json!({
        "iss": s.issuer,
        "sub": subject,
        // distribution 2.8 decodes `aud` as a single string.
        "aud": audience,
        "exp": exp,
        "nbf": iat.saturating_sub(1),
        "iat": iat,
        "jti": util::random_hex16(),
        "access": access_json,
    });
    let signing_input = format!(
        "{}.{}",
        util::b64url(header.to_string().as_bytes()),
        util::b64url(claims.to_string().as_bytes())
    );
    let rng = ring::rand::SystemRandom::new();
    let sig = sh
        .key
        .sign(&rng, signing_input.as_bytes())
        .expect("sign token");
    format!("{signing_input}.{}", util::b64url(sig.as_ref()))
}

fn json_response(status: StatusCode, body: Value) -> Response<RespBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(util::full(body.to_string()))
        .unwrap()
}

struct InFlight {
    sh: Arc<Shared>,
    key: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut c = self.sh.counters.lock().unwrap();
        if let Some(n) = c.in_flight.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
        c.in_flight_total = c.in_flight_total.saturating_sub(1);
    }
}

async fn handle(sh: Arc<Shared>, req: Request<Incoming>) -> Response<RespBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if path != "/token" {
        return json_response(StatusCode::NOT_FOUND, json!({"details": "not found"}));
    }
    let mut params = util::parse_query(req.uri().query().unwrap_or(""));
    let basic = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(util::parse_basic);
    let mut creds = basic;
    if method == Method::POST {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let form = util::parse_query(&String::from_utf8_lossy(&body));
        let get = |k: &str| form.iter().find(|(fk, _)| fk == k).map(|(_, v)| v.clone());
        if get("grant_type").as_deref() == Some("password")
            && let (Some(u), Some(p)) = (get("username"), get("password"))
        {
            creds = Some((u, p));
        }
        for (k, v) in &form {
            if k == "scope" {
                for sc in v.split(' ').filter(|s| !s.is_empty()) {
                    params.push(("scope".into(), sc.to_string()));
                }
            } else if k == "service" {
                params.push((k.clone(), v.clone()));
            }
        }
    } else if method != Method::GET {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"details": "method not allowed"}),
        );
    }
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .collect();
    let service = params
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.clone());
    let key = scopes.join(" ");

    let _guard = {
        let mut c = sh.counters.lock().unwrap();
        *c.per_scope.entry(key.clone()).or_default() += 1;
        let n = c.in_flight.entry(key.clone()).or_default();
        *n += 1;
        let n = *n;
        let m = c.max_in_flight.entry(key.clone()).or_default();
        *m = (*m).max(n);
        c.in_flight_total += 1;
        c.max_in_flight_total = c.max_in_flight_total.max(c.in_flight_total);
        InFlight {
            sh: sh.clone(),
            key: key.clone(),
        }
    };

    let settings = sh.settings.lock().unwrap().clone();
    if !settings.delay.is_zero() {
        tokio::time::sleep(settings.delay).await;
    }

    let mut record = TokenRequest {
        method: method.to_string(),
        user: creds.as_ref().map(|(u, _)| u.clone()),
        service: service.clone(),
        scopes: scopes.clone(),
        status: 200,
        granted: Vec::new(),
    };

    let user_grants: Option<Vec<Grant>> = match &creds {
        Some((u, p)) => match settings.users.get(u) {
            Some(user) if &user.password == p => Some(user.grants.clone()),
            _ => None,
        },
        None => settings.anonymous.clone(),
    };
    let Some(user_grants) = user_grants else {
        record.status = 401;
        sh.counters.lock().unwrap().log.push(record);
        let mut resp = json_response(
            StatusCode::UNAUTHORIZED,
            json!({"details": "incorrect username or password"}),
        );
        resp.headers_mut().insert(
            "www-authenticate",
            "Basic realm=\"berth-testkit-token-issuer\""
                .parse()
                .unwrap(),
        );
        return resp;
    };

    for sc in &scopes {
        if let Some((ty, name, actions)) = parse_scope(sc) {
            if ty != "repository" {
                continue;
            }
            let granted = grant_for(&user_grants, &name, &actions);
            match record.granted.iter_mut().find(|(n, _)| *n == name) {
                Some((_, acts)) => {
                    for a in granted {
                        if !acts.contains(&a) {
                            acts.push(a);
                        }
                    }
                }
                None => record.granted.push((name, granted)),
            }
        }
    }

    let now = util::now_unix();
    let lifetime = settings.lifetime.as_secs().max(1);
    let exp = if settings.exact_expiry {
        (now + lifetime).saturating_sub(60)
    } else {
        now + lifetime
    };
    let subject = record.user.clone().unwrap_or_default();
    let audience = service.clone().unwrap_or_else(|| settings.service.clone());
    let token = sign(
        &sh,
        &settings,
        &subject,
        &audience,
        &record.granted,
        now,
        exp,
    );

    let mut body = serde_json::Map::new();
    if matches!(settings.field, TokenField::Token | TokenField::Both) {
        body.insert("token".into(), Value::String(token.clone()));
    }
    if matches!(settings.field, TokenField::AccessToken | TokenField::Both) {
        body.insert("access_token".into(), Value::String(token));
    }
    if settings.expires_in {
        body.insert("expires_in".into(), json!(lifetime));
    }
    body.insert("issued_at".into(), Value::String(util::rfc3339(now)));
    sh.counters.lock().unwrap().log.push(record);
    json_response(StatusCode::OK, Value::Object(body))
}
