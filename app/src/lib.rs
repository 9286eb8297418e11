//! The Litestream Manager dashboard: the wire types shared by the server and the browser, the
//! client-side state they drive, the Leptos components, and the server functions.
//!
//! The crate builds in one of two modes, never both: `csr` for the browser (the `frontend`
//! cdylib mounts [`App`]) and `ssr` for the server, which compiles the server-function bodies and
//! registers them through `leptos_axum`. The crate knows nothing of the replication engine: the
//! server maps engine status into [`api`] types and exposes itself through
//! [`DashboardBackend`].
//!
//! # Layout
//! - [`api`]: serde DTOs of `GET /api/status` and of the `/ws` message stream.
//! - [`state`]: what the dashboard shows, and how each message changes it (pure, tested on the host).
//! - [`server_fns`]: `#[server]` functions (`/api/fn/...`) and, with `ssr`, the backend trait.
//! - [`components`]: the [`App`] component.
//! - `live` (`csr` only): the browser side of the connection: fetch, WebSocket, reconnect.

pub mod api;
pub mod components;
#[cfg(feature = "csr")]
mod live;
pub mod server_fns;
pub mod state;

pub use api::{
    ApiErrorBody, ApiErrorDetail, ClientDetail, ClientStatus, LevelFiles, LtxFile, RestoreCommands,
    RestoreWindow, StatusQuery, StatusResponse, WsMessage,
};
pub use components::App;
#[cfg(feature = "ssr")]
pub use server_fns::DashboardBackend;
pub use server_fns::{server_info, ServerInfo, SERVER_FN_PREFIX};
