//! The browser's link to the server: one `GET /api/status` for a fast first paint, then the
//! `/ws` message stream, reopened with capped exponential backoff whenever it closes.
//!
//! Invariant: at most one WebSocket is open per page. The socket and its callbacks live in
//! [`SOCKET`]; a reconnect replaces them from a timer, never from inside one of the old socket's
//! own callbacks.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use leptos::prelude::*;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{CloseEvent, Event, MessageEvent, WebSocket};

use crate::api::{StatusResponse, WsMessage};
use crate::state::{Connection, DashboardState};

/// First reconnect delay; doubled after each failed attempt up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Upper bound of the reconnect delay: a restarted server is picked up within ~10 s.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

struct Socket {
    ws: WebSocket,
    _on_open: Closure<dyn FnMut(Event)>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
}

thread_local! {
    static SOCKET: RefCell<Option<Socket>> = const { RefCell::new(None) };
    /// Failed attempts since the last successful open; drives the backoff.
    static FAILURES: Cell<u32> = const { Cell::new(0) };
}

/// Starts the initial fetch and the WebSocket. Called once by `App`.
pub fn start(state: RwSignal<DashboardState>, connection: RwSignal<Connection>) {
    leptos::task::spawn_local(async move {
        match fetch_status().await {
            Ok(status) => state.update(|s| s.apply_http_status(status)),
            Err(err) => leptos::logging::warn!("GET /api/status failed: {err}"),
        }
    });
    connect(state, connection);
}

fn connect(state: RwSignal<DashboardState>, connection: RwSignal<Connection>) {
    connection.set(Connection::Connecting);
    let ws = match ws_url().and_then(|url| WebSocket::new(&url).map_err(js_error)) {
        Ok(ws) => ws,
        Err(err) => {
            leptos::logging::warn!("cannot open WebSocket: {err}");
            schedule_reconnect(state, connection);
            return;
        }
    };

    let on_open = Closure::<dyn FnMut(Event)>::new(move |_| {
        FAILURES.with(|f| f.set(0));
        connection.set(Connection::Live);
    });
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
        let Some(text) = ev.data().as_string() else {
            return;
        };
        match serde_json::from_str::<WsMessage>(&text) {
            Ok(msg) => state.update(|s| s.apply(msg)),
            Err(err) => leptos::logging::warn!("ignoring /ws message ({err}): {text}"),
        }
    });
    let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |_| {
        connection.set(Connection::Offline);
        schedule_reconnect(state, connection);
    });
    ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));

    let old = SOCKET.with(|s| {
        s.borrow_mut().replace(Socket {
            ws,
            _on_open: on_open,
            _on_message: on_message,
            _on_close: on_close,
        })
    });
    if let Some(old) = old {
        // Normally already closed; make sure its callbacks can no longer fire.
        old.ws.set_onopen(None);
        old.ws.set_onmessage(None);
        old.ws.set_onclose(None);
        _ = old.ws.close();
    }
}

fn schedule_reconnect(state: RwSignal<DashboardState>, connection: RwSignal<Connection>) {
    let failures = FAILURES.with(|f| {
        let n = f.get().saturating_add(1);
        f.set(n);
        n
    });
    let delay = backoff(failures);
    set_timeout(move || connect(state, connection), delay);
}

/// Delay before attempt `failures` (1-based), with ±20 % jitter so many open pages do not
/// reconnect in lockstep after a server restart.
fn backoff(failures: u32) -> Duration {
    let exp = BACKOFF_START.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let base = exp.min(BACKOFF_MAX);
    base.mul_f64(0.8 + 0.4 * js_sys::Math::random())
}

fn ws_url() -> Result<String, String> {
    let location = web_sys::window().ok_or("no window")?.location();
    let scheme = match location.protocol().map_err(js_error)?.as_str() {
        "https:" => "wss:",
        _ => "ws:",
    };
    let host = location.host().map_err(js_error)?;
    Ok(format!("{scheme}//{host}/ws"))
}

async fn fetch_status() -> Result<StatusResponse, String> {
    let window = web_sys::window().ok_or("no window")?;
    let response: web_sys::Response = JsFuture::from(window.fetch_with_str("/api/status"))
        .await
        .map_err(js_error)?
        .dyn_into()
        .map_err(js_error)?;
    if !response.ok() {
        return Err(format!("HTTP {}", response.status()));
    }
    let text = JsFuture::from(response.text().map_err(js_error)?)
        .await
        .map_err(js_error)?
        .as_string()
        .ok_or("body is not text")?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

fn js_error(value: JsValue) -> String {
    value
        .as_string()
        .or_else(|| {
            value
                .dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
        })
        .unwrap_or_else(|| format!("{value:?}"))
}
