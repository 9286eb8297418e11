//! The dashboard's static files, embedded in the binary with rust-embed, served as the router's
//! fallback.
//!
//! What `build.rs` put in `DASH_DIST` is embedded: `dist/` from `cargo xtask dist`, or a
//! placeholder page. Caching: `/pkg/*` is immutable (the page references it with a `?v=<content
//! hash>` query, so a new build changes the URL); every other file is `no-cache`, `index.html`
//! included, so an upgraded binary is picked up on the next load.
//!
//! Under `cargo leptos watch`/`serve` (`LEPTOS_SITE_ROOT` set), files are read from that
//! directory on disk instead, and the page is one that loads cargo-leptos's file names and its
//! live-reload socket.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use rust_embed::{Embed, RustEmbed};

#[derive(Embed)]
#[folder = "$DASH_DIST"]
struct Dist;

const INDEX: &str = "index.html";
const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
const CACHE_REVALIDATE: &str = "no-cache";

/// Axum fallback: serves an embedded file, or `index.html` for client-side routes.
pub async fn static_handler(uri: Uri) -> Response {
    if let Some(site_root) = dev_site_root() {
        return dev::serve(site_root, uri.path()).await;
    }
    serve::<Dist>(uri.path())
}

fn serve<E: RustEmbed>(path: &str) -> Response {
    let Some(rel) = relative_path(path) else {
        return not_found();
    };
    let rel = if rel.is_empty() { INDEX } else { rel };
    match E::get(rel) {
        Some(file) => {
            let fallback_type = file.metadata.mimetype().to_string();
            respond(rel, file.data, Some(&fallback_type))
        }
        None if is_client_route(rel) => match E::get(INDEX) {
            Some(index) => respond(INDEX, index.data, None),
            None => not_found(),
        },
        None => not_found(),
    }
}

/// The path without its leading `/`; `None` when it tries to leave the site (`..`).
fn relative_path(path: &str) -> Option<&str> {
    let rel = path.trim_start_matches('/');
    let escapes = rel
        .split(['/', '\\'])
        .any(|segment| segment == ".." || segment == ".");
    (!escapes).then_some(rel)
}

/// Whether an unknown path is a page of the single-page app (answered with `index.html`) rather
/// than a missing file or API (answered 404): no file extension, and not under `api/`, `pkg/`
/// or `ws`.
fn is_client_route(rel: &str) -> bool {
    let reserved = ["api", "pkg", "ws"]
        .iter()
        .any(|prefix| rel == *prefix || rel.starts_with(&format!("{prefix}/")));
    let last = rel.rsplit('/').next().unwrap_or_default();
    !reserved && !last.contains('.')
}

fn respond(rel: &str, data: Cow<'static, [u8]>, fallback_type: Option<&str>) -> Response {
    let content_type = content_type(rel)
        .or(fallback_type)
        .unwrap_or("application/octet-stream");
    let cache = if rel.starts_with("pkg/") {
        CACHE_IMMUTABLE
    } else {
        CACHE_REVALIDATE
    };
    let mut response = Response::new(Body::from(data));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Content types of what the dashboard ships; rust-embed's guess covers anything else.
fn content_type(rel: &str) -> Option<&'static str> {
    let ext = Path::new(rel).extension()?.to_str()?;
    Some(match ext.to_ascii_lowercase().as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        "woff2" => "font/woff2",
        _ => return None,
    })
}

fn not_found() -> Response {
    let mut response = Response::new(Body::from("not found"));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `LEPTOS_SITE_ROOT`, which cargo-leptos sets when it runs the server.
fn dev_site_root() -> Option<&'static Path> {
    static ROOT: OnceLock<Option<PathBuf>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::var_os("LEPTOS_SITE_ROOT").map(PathBuf::from)?;
        tracing::info!(site_root = %root.display(), "serving the dashboard from disk (cargo-leptos)");
        Some(root)
    })
    .as_deref()
}

/// The dev loop under cargo-leptos: files from its site directory, no caching.
mod dev {
    use super::*;

    pub async fn serve(site_root: &Path, path: &str) -> Response {
        let Some(rel) = relative_path(path) else {
            return not_found();
        };
        if !rel.is_empty() && rel != INDEX {
            if let Ok(data) = tokio::fs::read(site_root.join(rel)).await {
                let mut response = respond(rel, data.into(), None);
                response.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static(CACHE_REVALIDATE),
                );
                return response;
            }
            if !is_client_route(rel) {
                return not_found();
            }
        }
        respond(INDEX, index_html().into_bytes().into(), None)
    }

    /// cargo-leptos names its output `<pkg>/<name>.js`, `<name>.wasm`, `<name>.css` and does not
    /// produce an index page; this is ours for that layout, plus its live-reload client.
    fn index_html() -> String {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
        let name = var("LEPTOS_OUTPUT_NAME", "frontend");
        let pkg = var("LEPTOS_SITE_PKG_DIR", "pkg");
        let reload = match std::env::var("LEPTOS_RELOAD_PORT") {
            Ok(port) => format!(
                r#"<script>(function connect() {{
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.hostname + ":{port}/live_reload");
  ws.onmessage = (ev) => {{ const msg = JSON.parse(ev.data); if (msg.all || msg.css) location.reload(); }};
  ws.onclose = () => setTimeout(connect, 1000);
}})();</script>"#
            ),
            Err(_) => String::new(),
        };
        format!(
            r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Litestream Manager (dev)</title>
<link rel="icon" href="/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/{pkg}/{name}.css">
<script type="module">import init from "/{pkg}/{name}.js"; init({{ module_or_path: "/{pkg}/{name}.wasm" }});</script>
{reload}
</head>
<body></body>
</html>
"#
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    #[derive(Embed)]
    #[folder = "$DASH_TEST_ASSETS"]
    struct Fixture;

    fn header(response: &Response, name: header::HeaderName) -> &str {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    async fn body(response: Response) -> String {
        String::from_utf8_lossy(&to_bytes(response.into_body(), 1 << 20).await.unwrap())
            .into_owned()
    }

    #[tokio::test]
    async fn root_serves_index_without_caching() {
        let response = serve::<Fixture>("/");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        assert_eq!(header(&response, header::CACHE_CONTROL), "no-cache");
        assert!(body(response).await.contains("fixture"));
    }

    #[test]
    fn files_get_their_content_type() {
        for (path, expected) in [
            ("/pkg/frontend_bg.wasm", "application/wasm"),
            ("/pkg/frontend.js", "text/javascript; charset=utf-8"),
            ("/main.css", "text/css; charset=utf-8"),
            ("/favicon.svg", "image/svg+xml"),
            ("/index.html", "text/html; charset=utf-8"),
        ] {
            let response = serve::<Fixture>(path);
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(header(&response, header::CONTENT_TYPE), expected, "{path}");
            assert_eq!(header(&response, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        }
    }

    #[test]
    fn pkg_files_are_cached_forever_and_others_revalidated() {
        let wasm = serve::<Fixture>("/pkg/frontend_bg.wasm");
        assert_eq!(header(&wasm, header::CACHE_CONTROL), CACHE_IMMUTABLE);
        let css = serve::<Fixture>("/main.css");
        assert_eq!(header(&css, header::CACHE_CONTROL), "no-cache");
    }

    #[tokio::test]
    async fn client_routes_fall_back_to_index() {
        for path in ["/clients", "/clients/0b6f1c1e-6a7d-4c43-9a53-2f1f3c1c9e11"] {
            let response = serve::<Fixture>(path);
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(header(&response, header::CACHE_CONTROL), "no-cache");
            assert!(body(response).await.contains("fixture"), "{path}");
        }
    }

    #[test]
    fn missing_files_and_reserved_paths_are_404() {
        for path in [
            "/pkg/missing.js",
            "/pkg/other",
            "/missing.png",
            "/api/nope",
            "/api",
            "/ws",
            "/../Cargo.toml",
            "/pkg/../index.html",
        ] {
            assert_eq!(
                serve::<Fixture>(path).status(),
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn the_embedded_dashboard_has_an_index() {
        // Either the real dist/ or build.rs's placeholder: both must answer `/`.
        let response = serve::<Dist>("/");
        assert_eq!(response.status(), StatusCode::OK);
        let html = body(response).await;
        assert!(html.contains("Litestream Manager"), "{html}");
    }
}
