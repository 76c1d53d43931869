//! [`ApiClient`]: the `berth` CLI's side of the Phala-compatible API.
//!
//! Lives here, next to the server, so that the JSON field names of the API
//! are known in one crate only.

use crate::error::ApiError;
use serde_json::{Value, json};

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

/// A CVM as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CvmInfo {
    /// The CVM's UUID.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its status.
    pub status: String,
    /// Its app.
    pub app_id: String,
    /// The failure category of its last boot.
    pub boot_category: Option<String>,
    /// The last boot's final line, when it failed.
    pub boot_error: Option<String>,
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
    fn from_json(v: &Value) -> Self {
        let s = |k: &str| v[k].as_str().map(str::to_owned);
        CvmInfo {
            id: s("vm_uuid").or_else(|| s("id")).unwrap_or_default(),
            name: s("name").unwrap_or_default(),
            status: s("status").unwrap_or_default(),
            app_id: s("app_id").unwrap_or_default(),
            boot_category: s("boot_category"),
            boot_error: s("boot_error"),
            syslog_endpoint: s("syslog_endpoint"),
            created_at: s("created_at").unwrap_or_default(),
            compose_hash: s("compose_hash"),
            compose_file: s("docker_compose_file"),
            raw: v.clone(),
        }
    }

    /// Whether the CVM is still booting.
    pub fn booting(&self) -> bool {
        matches!(self.status.as_str(), "provisioning" | "starting")
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
    ) -> Result<Value, ApiError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method, &url)
            .header("X-API-Key", &self.key)
            .header("X-Phala-Version", "2025-10-28");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            ApiError::upstream(format!("cannot reach the API at {}: {e}", self.base))
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
            let mut e = ApiError::upstream(detail);
            e.status = status;
            return Err(e);
        }
        Ok(value)
    }

    /// `POST /cvms/provision`.
    pub async fn provision(
        &self,
        name: &str,
        compose: &str,
        allowed_envs: &[String],
    ) -> Result<Provisioned, ApiError> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/cvms/provision",
                Some(json!({
                    "name": name,
                    "compose_file": {"allowed_envs": allowed_envs, "docker_compose_file": compose, "name": "",
                                     "public_logs": true, "public_sysinfo": true},
                    "listed": false, "kms": "PHALA", "instance_type": "tdx.small",
                })),
            )
            .await?;
        let s = |k: &str| v[k].as_str().map(str::to_owned);
        Ok(Provisioned {
            app_id: s("app_id")
                .ok_or_else(|| ApiError::upstream("provision answered without app_id"))?,
            compose_hash: s("compose_hash")
                .ok_or_else(|| ApiError::upstream("provision answered without compose_hash"))?,
            env_pubkey: s("app_env_encrypt_pubkey").ok_or_else(|| {
                ApiError::upstream("provision answered without app_env_encrypt_pubkey")
            })?,
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
    ) -> Result<CvmInfo, ApiError> {
        let mut body =
            json!({"app_id": app_id, "compose_hash": compose_hash, "env_keys": env_keys});
        if let Some(e) = encrypted_env {
            body["encrypted_env"] = json!(e);
        }
        Ok(CvmInfo::from_json(
            &self
                .call(reqwest::Method::POST, "/cvms", Some(body))
                .await?,
        ))
    }

    /// `GET /cvms/{id}`.
    pub async fn get(&self, id: &str) -> Result<CvmInfo, ApiError> {
        Ok(CvmInfo::from_json(
            &self
                .call(reqwest::Method::GET, &format!("/cvms/{id}"), None)
                .await?,
        ))
    }

    /// `GET /cvms`.
    pub async fn list(&self) -> Result<Vec<CvmInfo>, ApiError> {
        let v = self.call(reqwest::Method::GET, "/cvms", None).await?;
        Ok(v.as_array()
            .map(|a| a.iter().map(CvmInfo::from_json).collect())
            .unwrap_or_default())
    }

    /// `POST /cvms/{id}/{start|stop|restart}`.
    pub async fn action(&self, id: &str, action: &str) -> Result<CvmInfo, ApiError> {
        let body = (action == "restart").then(|| json!({"force": false}));
        Ok(CvmInfo::from_json(
            &self
                .call(reqwest::Method::POST, &format!("/cvms/{id}/{action}"), body)
                .await?,
        ))
    }

    /// `POST /users` (admin): a new user; returns its API key (shown once).
    pub async fn create_user(&self, name: &str) -> Result<String, ApiError> {
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
    pub async fn rotate_key(&self, name: &str) -> Result<String, ApiError> {
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
    pub async fn revoke_user(&self, name: &str) -> Result<(), ApiError> {
        self.call(
            reqwest::Method::POST,
            &format!("/users/{name}/revoke"),
            None,
        )
        .await
        .map(drop)
    }

    fn api_key_of(v: &Value) -> Result<String, ApiError> {
        v["api_key"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ApiError::upstream("the API answered without an api_key"))
    }

    /// `DELETE /cvms/{id}`.
    pub async fn delete(&self, id: &str) -> Result<(), ApiError> {
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
    ) -> Result<reqwest::Response, ApiError> {
        let endpoint = cvm
            .syslog_endpoint
            .as_deref()
            .ok_or_else(|| ApiError::upstream("the CVM has no log endpoint"))?;
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
            .map_err(|e| ApiError::upstream(format!("cannot fetch the logs: {e}")))?;
        if !resp.status().is_success() {
            return Err(ApiError::upstream(format!(
                "the log endpoint answered {}",
                resp.status()
            )));
        }
        Ok(resp)
    }
}
