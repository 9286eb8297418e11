//! Leptos server functions of the dashboard, served under [`SERVER_FN_PREFIX`].
//!
//! The browser calls them over HTTP; the server compiles their bodies (`ssr`) and registers them
//! through `leptos_axum::handle_server_fns_with_context`, which must provide an
//! `Arc<dyn DashboardBackend>` as context. The bodies reach the server only through that trait,
//! so this crate stays independent of the engine.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

/// URL prefix of every server function; the server mounts the handler at `{prefix}/{*fn_name}`.
/// Kept under `/api/` but away from `/api/status` and friends.
pub const SERVER_FN_PREFIX: &str = "/api/fn";

/// Facts about the running server shown in the dashboard header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerInfo {
    /// The server binary's version (its `CARGO_PKG_VERSION`).
    pub version: String,
    /// Human form, e.g. `"1h2m3s"`.
    pub uptime: String,
    pub uptime_seconds: u64,
}

/// `POST /api/fn/server_info`: version and uptime of the server.
#[server(name = GetServerInfo, prefix = "/api/fn", endpoint = "server_info")]
pub async fn server_info() -> Result<ServerInfo, ServerFnError> {
    let backend = use_context::<std::sync::Arc<dyn DashboardBackend>>().ok_or_else(|| {
        ServerFnError::new(
            "no DashboardBackend in context: register with handle_server_fns_with_context",
        )
    })?;
    Ok(backend.server_info())
}

#[cfg(feature = "ssr")]
pub use ssr::DashboardBackend;

#[cfg(feature = "ssr")]
mod ssr {
    use super::ServerInfo;

    /// What the server-function bodies need from the server. The server implements it on its
    /// own state and provides `Arc<dyn DashboardBackend>` as Leptos context for each call.
    pub trait DashboardBackend: Send + Sync + 'static {
        fn server_info(&self) -> ServerInfo;
    }
}

#[cfg(all(test, feature = "ssr"))]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Fixed;

    impl DashboardBackend for Fixed {
        fn server_info(&self) -> ServerInfo {
            ServerInfo {
                version: "9.9.9".into(),
                uptime: "3s".into(),
                uptime_seconds: 3,
            }
        }
    }

    fn block_on<F: std::future::Future>(fut: F) -> F::Output {
        // The body awaits nothing, so one poll with a no-op waker completes it.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut fut = std::pin::pin!(fut);
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(out) => out,
            std::task::Poll::Pending => panic!("server_info should not wait"),
        }
    }

    #[test]
    fn server_info_reads_the_backend_from_context() {
        let owner = Owner::new();
        owner.with(|| {
            provide_context::<Arc<dyn DashboardBackend>>(Arc::new(Fixed));
            let info = block_on(server_info()).unwrap();
            assert_eq!(info.version, "9.9.9");
        });
    }

    #[test]
    fn server_info_without_backend_is_an_error() {
        let owner = Owner::new();
        owner.with(|| assert!(block_on(server_info()).is_err()));
    }

    #[test]
    fn server_fn_url_is_under_the_prefix() {
        use leptos::server_fn::ServerFn;
        assert_eq!(GetServerInfo::PATH, "/api/fn/server_info");
        assert!(GetServerInfo::PATH.starts_with(SERVER_FN_PREFIX));
    }
}
