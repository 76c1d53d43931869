//! [`ApiClient`]: the `berth` CLI's side of the Phala-compatible API.
//!
//! Lives here, next to the server, so that the JSON field names of the API
//! are known in one crate only. Its failures are [`ClientError`]s: what a
//! client saw (no answer, an error answer with its status, an answer it
//! cannot read), which each front end words for its user.

use contract::CvmStatus;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Why a call of the API failed, as the client saw it. Never holds the API key.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer from the API.
    #[error("cannot reach the API at {base}: {source}")]
    Unreachable {
        /// The API's base URL.
        base: String,
        /// What the transport said.
        source: reqwest::Error,
    },
    /// The API answered with an error: its status and its sentence.
    #[error("{detail}")]
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// The API's `detail` (or the status, without one).
        detail: String,
    },
    /// The API's answer lacks something this client needs.
    #[error("{0}")]
    BadAnswer(&'static str),
    /// The API answered a CVM status this client does not know.
    #[error("the API answered an unknown CVM status: {0}")]
    UnknownStatus(#[from] contract::UnknownStatus),
    /// The CVM's answer has no `syslog_endpoint`.
    #[error("the CVM has no log endpoint")]
    NoLogEndpoint,
    /// No answer from the log endpoint.
    #[error("cannot fetch the logs: {0}")]
    Logs(#[source] reqwest::Error),
    /// The log endpoint answered with an error.
    #[error("the log endpoint answered {0}")]
    LogsRefused(StatusCode),
}

impl ClientError {
    /// The API's HTTP status, when it answered with an error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the API refused the request itself (a 4xx answer): the
    /// caller must change something, retrying will not help.
    pub fn is_client_error(&self) -> bool {
        self.status().is_some_and(|s| s.is_client_error())
    }
}

/// A client of a Berth (or Phala-compatible) API.
pub struct ApiClient {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// What provisioning returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provisioned {
    /// The app id.
    pub app_id: String,
    /// The compose hash.
    pub compose_hash: String,
    /// The env public key to seal to, hex.
    pub env_pubkey: String,
    /// The KMS's legacy (untimestamped) signature over it, hex (Berth servers only).
    pub signature: Option<String>,
    /// The KMS's timestamped signature over it, hex (Berth servers only).
    pub signature_v1: Option<String>,
    /// Its timestamp.
    pub timestamp: Option<u64>,
}

/// What an update would boot (`X-Prepare-Only`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedUpdate {
    /// The app id.
    pub app_id: String,
    /// The new compose hash, as the server computed it.
    pub compose_hash: String,
    /// The new manifest, exactly as it would be measured.
    pub app_compose: String,
    /// `cloud` or `owner`.
    pub upgrade_authority: String,
    /// The last counter the KMS accepted for the app.
    pub counter: u64,
    /// The env public key to seal to, hex.
    pub env_pubkey: String,
    /// The KMS's legacy signature over it.
    pub signature: Option<String>,
    /// The KMS's timestamped signature over it.
    pub signature_v1: Option<String>,
    /// Its timestamp.
    pub timestamp: Option<u64>,
}

/// A CVM as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CvmInfo {
    /// The CVM's UUID.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its status.
    pub status: CvmStatus,
    /// Its app.
    pub app_id: String,
    /// The failure category of its last boot.
    pub boot_category: Option<String>,
    /// The last boot's final line, when it failed.
    pub boot_error: Option<String>,
    /// What its boot waits for, e.g. "waiting for a boot slot (3 ahead)".
    pub boot_progress: Option<String>,
    /// Where its logs are (`…?token=…`).
    pub syslog_endpoint: Option<String>,
    /// When it was created.
    pub created_at: String,
    /// Its app's compose hash (sha256 of `app-compose.json`, hex).
    pub compose_hash: Option<String>,
    /// Its Docker Compose file, as deployed.
    pub compose_file: Option<String>,
    /// The API's answer, unchanged (for `--json`).
    pub raw: Value,
}

impl CvmInfo {
    fn from_json(v: &Value) -> Result<Self, ClientError> {
        let s = |k: &str| v[k].as_str().map(str::to_owned);
        Ok(CvmInfo {
            id: s("vm_uuid").or_else(|| s("id")).unwrap_or_default(),
            name: s("name").unwrap_or_default(),
            status: v["status"]
                .as_str()
                .ok_or(ClientError::BadAnswer(
                    "the API answered a CVM without a status",
                ))?
                .parse()?,
            app_id: s("app_id").unwrap_or_default(),
            boot_category: s("boot_category"),
            boot_error: s("boot_error"),
            boot_progress: s("boot_progress"),
            syslog_endpoint: s("syslog_endpoint"),
            created_at: s("created_at").unwrap_or_default(),
            compose_hash: s("compose_hash"),
            compose_file: s("docker_compose_file"),
            raw: v.clone(),
        })
    }

    /// Whether the CVM is still booting.
    pub fn booting(&self) -> bool {
        self.status.in_progress()
    }
}

impl ApiClient {
    /// A client for `base` (ending in `/api/v1`) with API key `key`.
    pub fn new(base: &str, key: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        self.call_with(method, path, body, &[]).await
    }

    async fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method, &url)
            .header("X-API-Key", &self.key)
            .header("X-Phala-Version", "2025-10-28");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                base: self.base.clone(),
                source,
            })?;
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let detail = value["detail"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| value["detail"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("HTTP {status}"));
            return Err(ClientError::Refused { status, detail });
        }
        Ok(value)
    }

    /// `POST /cvms/provision`; with `owner_key`, an owner-authorized app
    /// (Berth's `berth_owner_key`).
    pub async fn provision(
        &self,
        name: &str,
        compose: &str,
        allowed_envs: &[String],
        owner_key: Option<&str>,
        image_policy: Option<&Value>,
    ) -> Result<Provisioned, ClientError> {
        let mut body = json!({
            "name": name,
            "compose_file": {"allowed_envs": allowed_envs, "docker_compose_file": compose, "name": "",
                             "public_logs": true, "public_sysinfo": true},
            "listed": false, "kms": "PHALA", "instance_type": "tdx.small",
        });
        if let Some(k) = owner_key {
            body["berth_owner_key"] = json!(k);
        }
        if let Some(p) = image_policy {
            body["berth_image_policy"] = p.clone();
        }
        let v = self
            .call(reqwest::Method::POST, "/cvms/provision", Some(body))
            .await?;
        let s = |k: &str| v[k].as_str().map(str::to_owned);
        Ok(Provisioned {
            app_id: s("app_id")
                .ok_or(ClientError::BadAnswer("provision answered without app_id"))?,
            compose_hash: s("compose_hash").ok_or(ClientError::BadAnswer(
                "provision answered without compose_hash",
            ))?,
            env_pubkey: s("app_env_encrypt_pubkey").ok_or(ClientError::BadAnswer(
                "provision answered without app_env_encrypt_pubkey",
            ))?,
            signature: s("app_env_encrypt_pubkey_signature"),
            signature_v1: s("app_env_encrypt_pubkey_signature_v1"),
            timestamp: v["app_env_encrypt_pubkey_timestamp"].as_u64(),
        })
    }

    /// `POST /cvms`.
    pub async fn commit(
        &self,
        app_id: &str,
        compose_hash: &str,
        encrypted_env: Option<&str>,
        env_keys: &[String],
    ) -> Result<CvmInfo, ClientError> {
        let mut body =
            json!({"app_id": app_id, "compose_hash": compose_hash, "env_keys": env_keys});
        if let Some(e) = encrypted_env {
            body["encrypted_env"] = json!(e);
        }
        CvmInfo::from_json(
            &self
                .call(reqwest::Method::POST, "/cvms", Some(body))
                .await?,
        )
    }

    /// `PATCH /cvms/{id}` with `X-Prepare-Only`: the manifest an update
    /// would boot, its hash, the app's counter and its signed env key;
    /// nothing changes.
    pub async fn prepare_update(
        &self,
        id: &str,
        compose: &str,
        allowed_envs: Option<&[String]>,
        image_policy: Option<&Value>,
    ) -> Result<PreparedUpdate, ClientError> {
        let mut body = json!({"docker_compose_file": compose});
        if let Some(keys) = allowed_envs {
            body["allowed_envs"] = json!(keys);
        }
        if let Some(p) = image_policy {
            body["berth_image_policy"] = p.clone();
        }
        let v = self
            .call_with(
                reqwest::Method::PATCH,
                &format!("/cvms/{id}"),
                Some(body),
                &[("X-Prepare-Only", "true")],
            )
            .await?;
        let s = |k: &str| v[k].as_str().map(str::to_owned);
        let missing = ClientError::BadAnswer("the prepared update lacks a field");
        Ok(PreparedUpdate {
            app_id: s("app_id").ok_or(missing)?,
            compose_hash: s("compose_hash").ok_or(ClientError::BadAnswer(
                "the prepared update lacks compose_hash",
            ))?,
            app_compose: s("app_compose").ok_or(ClientError::BadAnswer(
                "the prepared update lacks app_compose",
            ))?,
            upgrade_authority: s("upgrade_authority").unwrap_or_default(),
            counter: v["counter"].as_u64().unwrap_or(0),
            env_pubkey: s("app_env_encrypt_pubkey").unwrap_or_default(),
            signature: s("app_env_encrypt_pubkey_signature"),
            signature_v1: s("app_env_encrypt_pubkey_signature_v1"),
            timestamp: v["app_env_encrypt_pubkey_timestamp"].as_u64(),
        })
    }

    /// `PATCH /cvms/{id}`: the update itself.
    pub async fn update(
        &self,
        id: &str,
        compose: &str,
        allowed_envs: Option<&[String]>,
        encrypted_env: Option<&str>,
        authorization: Option<&contract::upgrade::OwnerAuthorization>,
        image_policy: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let mut body = json!({"docker_compose_file": compose});
        if let Some(p) = image_policy {
            body["berth_image_policy"] = p.clone();
        }
        if let Some(keys) = allowed_envs {
            body["allowed_envs"] = json!(keys);
        }
        if let Some(e) = encrypted_env {
            body["encrypted_env"] = json!(e);
        }
        if let Some(a) = authorization {
            body["berth_owner_authorization"] = json!(a);
        }
        self.call(reqwest::Method::PATCH, &format!("/cvms/{id}"), Some(body))
            .await
    }

    /// `GET /berth/attestation-key` (Berth): the public key that checks
    /// this cloud's simulated quotes, hex.
    pub async fn attestation_key(&self) -> Result<String, ClientError> {
        let v = self
            .call(reqwest::Method::GET, "/berth/attestation-key", None)
            .await?;
        Ok(v["attestation_public_key"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// `GET /cvms/{id}/docker-compose.yml`: the compose file the CVM runs.
    pub async fn compose_file(&self, id: &str) -> Result<String, ClientError> {
        let url = format!("{}/cvms/{id}/docker-compose.yml", self.base);
        let resp = self
            .http
            .get(&url)
            .header("X-API-Key", &self.key)
            .header("X-Phala-Version", "2025-10-28")
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                base: self.base.clone(),
                source,
            })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(ClientError::Refused {
                status,
                detail: format!("HTTP {status}"),
            });
        }
        Ok(text)
    }

    /// `GET /cvms/{id}/history` (Berth).
    pub async fn history(&self, id: &str) -> Result<Value, ClientError> {
        self.call(reqwest::Method::GET, &format!("/cvms/{id}/history"), None)
            .await
    }

    /// `GET /cvms/{id}`.
    pub async fn get(&self, id: &str) -> Result<CvmInfo, ClientError> {
        CvmInfo::from_json(
            &self
                .call(reqwest::Method::GET, &format!("/cvms/{id}"), None)
                .await?,
        )
    }

    /// `GET /cvms`.
    pub async fn list(&self) -> Result<Vec<CvmInfo>, ClientError> {
        let v = self.call(reqwest::Method::GET, "/cvms", None).await?;
        v.as_array()
            .map(|a| a.iter().map(CvmInfo::from_json).collect())
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    /// `POST /cvms/{id}/{start|stop|restart}`.
    pub async fn action(&self, id: &str, action: &str) -> Result<CvmInfo, ClientError> {
        let body = (action == "restart").then(|| json!({"force": false}));
        CvmInfo::from_json(
            &self
                .call(reqwest::Method::POST, &format!("/cvms/{id}/{action}"), body)
                .await?,
        )
    }

    /// `POST /users` (admin): a new user; returns its API key (shown once).
    pub async fn create_user(&self, name: &str) -> Result<String, ClientError> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/users",
                Some(json!({"username": name})),
            )
            .await?;
        Self::api_key_of(&v)
    }

    /// `POST /users/{name}/rotate-key`: a new key for the user (the old one
    /// stops working); returns it.
    pub async fn rotate_key(&self, name: &str) -> Result<String, ClientError> {
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/users/{name}/rotate-key"),
                None,
            )
            .await?;
        Self::api_key_of(&v)
    }

    /// `POST /users/{name}/revoke` (admin): the user's key stops working.
    pub async fn revoke_user(&self, name: &str) -> Result<(), ClientError> {
        self.call(
            reqwest::Method::POST,
            &format!("/users/{name}/revoke"),
            None,
        )
        .await
        .map(drop)
    }

    fn api_key_of(v: &Value) -> Result<String, ClientError> {
        v["api_key"]
            .as_str()
            .map(str::to_owned)
            .ok_or(ClientError::BadAnswer(
                "the API answered without an api_key",
            ))
    }

    /// `DELETE /cvms/{id}`.
    pub async fn delete(&self, id: &str) -> Result<(), ClientError> {
        self.call(reqwest::Method::DELETE, &format!("/cvms/{id}"), None)
            .await
            .map(|_| ())
    }

    /// The CVM's log channel (`serial`, `stdout`, `stderr`), as a response
    /// whose body can be streamed.
    pub async fn logs(
        &self,
        cvm: &CvmInfo,
        channel: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let endpoint = cvm
            .syslog_endpoint
            .as_deref()
            .ok_or(ClientError::NoLogEndpoint)?;
        let mut url = format!("{endpoint}&ch={channel}");
        if let Some(n) = tail {
            url.push_str(&format!("&tail={n}"));
        }
        if follow {
            url.push_str("&follow");
        }
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(ClientError::Logs)?;
        if !resp.status().is_success() {
            return Err(ClientError::LogsRefused(resp.status()));
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failures_say_whether_the_api_answered() {
        // Nobody listens: no status, not the caller's fault.
        let idle = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/api/v1", idle.local_addr().unwrap());
        drop(idle);
        let e = ApiClient::new(&base, "k").get("x").await.unwrap_err();
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e:?}");
        assert!(!e.is_client_error());
        // An API that refuses: its status and its sentence.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/api/v1", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(|| async { crate::ApiError::not_found("no CVM `x` among yours") });
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let e = ApiClient::new(&base, "k").get("x").await.unwrap_err();
        assert!(
            matches!(&e, ClientError::Refused { status, .. } if *status == StatusCode::NOT_FOUND),
            "{e:?}"
        );
        assert!(e.is_client_error());
        assert_eq!(e.to_string(), "no CVM `x` among yours");
        server.abort();
    }
}
