//! WASM entry point of the dashboard: mounts [`app::App`] into `<body>` when the module starts.
//!
//! Built only for `wasm32-unknown-unknown` (`cargo xtask dist`); on the host the crate is empty,
//! so a workspace-wide `cargo build`/`clippy` never turns on `app/csr` next to the server's
//! `app/ssr`.
#![cfg(target_arch = "wasm32")]

use wasm_bindgen::prelude::wasm_bindgen;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(app::App);
}
