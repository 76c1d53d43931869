//! The web console: a page served at `/` by `berth up`, on the API's own
//! origin, that deploys and manages CVMs through the public API
//! (`/api/v1`, `X-API-Key`) and seals env values in the browser
//! (WebCrypto X25519 + AES-GCM, `envseal`'s byte layout).
//!
//! The assets (`crates/cloud/console/`) are plain HTML, CSS and JavaScript
//! modules, embedded at compile time with `include_str!`: no build step, no
//! Node for `cargo build`, nothing fetched from elsewhere. Every answer
//! carries the same headers ([`SECURITY_HEADERS`]): a Content-Security-Policy
//! that allows scripts, styles and connections from this origin only and no
//! inline script, `frame-ancestors 'none'`, `nosniff`, no referrer.
//!
//! Why hand-written rather than `rust-embed`/`tower-http`: ten fixed files
//! and four headers are a table and a match; a crate would add a
//! dependency tree for no behaviour the table lacks.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The Content-Security-Policy of every console answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; form-action 'none'; base-uri 'none'; \
     frame-ancestors 'none'";

/// The headers of every console answer.
pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cache-control", "no-store"),
];

/// One embedded file: its name under `/console/`, media type, bytes.
struct Asset {
    name: &'static str,
    media_type: &'static str,
    body: &'static str,
}

macro_rules! asset {
    ($name:literal, $media:expr) => {
        Asset {
            name: $name,
            media_type: $media,
            body: include_str!(concat!("../../console/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the console.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("seal.js", JS),
    asset!("dotenv.js", JS),
    asset!("deploy.js", JS),
    asset!("cvm.js", JS),
    asset!("ui.js", JS),
];

/// The console's routes: the page at `/` and its files under `/console/`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset_response("index.html") }))
        .route("/favicon.ico", get(|| async { asset_response("icon.svg") }))
        .route(
            "/console/{file}",
            get(|Path(file): Path<String>| async move { asset_response(&file) }),
        )
}

/// The file `name` with the console's headers; 404 (with the same
/// headers) for any other name.
fn asset_response(name: &str) -> Response {
    let mut resp = match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => ([(header::CONTENT_TYPE, a.media_type)], a.body).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such console file",
        )
            .into_response(),
    };
    for (name, value) in SECURITY_HEADERS {
        resp.headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing is loaded from another origin (HTML and CSS name none, every
    /// module import is relative), and the page has no inline script,
    /// style or handler, which the CSP would block.
    #[test]
    fn assets_are_self_contained() {
        for a in ASSETS {
            for bad in [
                "src=\"http",
                "href=\"http",
                "url(",
                "@import",
                "from 'http",
                "import('http",
            ] {
                assert!(!a.body.contains(bad), "{} has {bad}", a.name);
            }
            for line in a.body.lines().filter(|l| l.starts_with("import ")) {
                assert!(line.contains(" from './"), "{}: {line}", a.name);
            }
        }
        let html = ASSETS[0].body;
        assert!(html.contains(r#"<script type="module" src="/console/app.js"></script>"#));
        assert_eq!(html.matches("<script").count(), 1, "inline script");
        assert!(!html.contains("style=") && !html.contains(" onclick="));
    }

    #[test]
    fn unknown_files_are_404_with_the_headers() {
        let resp = asset_response("../Cargo.toml");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()["content-security-policy"], CSP);
    }
}
