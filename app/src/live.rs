//! The browser's link to the server: the `/ws` message stream (its first message is the full
//! snapshot, so the page does not also fetch `GET /api/status`: at 10,000 tenants that would be
//! every row twice), reopened with capped exponential backoff whenever it closes; plus the
//! tenant detail fetch, the clipboard and the one-second clock the live lags follow.
//!
//! Fallback: when the WebSocket fails before the page has any status (a proxy that refuses the
//! upgrade, say), one `GET /api/status` per failure streak fills the page, marked offline.
//!
//! Invariant: at most one WebSocket is open per page. The socket and its callbacks live in
//! [`SOCKET`]; a reconnect replaces them from a timer, never from inside one of the old socket's
//! own callbacks. Messages are applied in arrival order, in batches: each message goes to
//! [`PENDING`] and one timer per [`BATCH_DELAY`] applies them all in one signal update, so a
//! burst of changes among 10,000 tenants redraws the page once, not once per message.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use leptos::prelude::*;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{CloseEvent, Event, MessageEvent, WebSocket};

use crate::api::{ApiErrorBody, StatusResponse, WsMessage};
use crate::state::{parse_detail, Connection, DashboardState, Detail, DetailError};

/// First reconnect delay; doubled after each failed attempt up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Upper bound of the reconnect delay: a restarted server is picked up within ~10 s.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long messages gather before one redraw: well under the 2 s a new tenant may take to
/// appear, long enough to merge a burst.
const BATCH_DELAY: Duration = Duration::from_millis(50);
/// The clock the live lags follow ticks this often.
const CLOCK_TICK: Duration = Duration::from_secs(1);

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
    /// Messages received but not applied yet, oldest first.
    static PENDING: RefCell<Vec<WsMessage>> = const { RefCell::new(Vec::new()) };
    /// Whether a flush of [`PENDING`] is scheduled.
    static FLUSH_SCHEDULED: Cell<bool> = const { Cell::new(false) };
}

/// Opens the WebSocket. Called once by `App`.
pub fn start(state: RwSignal<DashboardState>, connection: RwSignal<Connection>) {
    connect(state, connection);
}

/// Browser time, seconds since the epoch.
fn now_secs() -> f64 {
    js_sys::Date::now() / 1000.0
}

/// Sets `now` to the browser's time, then again every [`CLOCK_TICK`]. Called once by `App`.
pub fn start_clock(now: RwSignal<Option<f64>>) {
    now.set(Some(now_secs()));
    if let Err(err) = set_interval_with_handle(move || now.set(Some(now_secs())), CLOCK_TICK) {
        leptos::logging::warn!("no clock for the live lags: {}", js_error(err));
    }
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
            Ok(msg) => enqueue(state, msg),
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

fn enqueue(state: RwSignal<DashboardState>, msg: WsMessage) {
    PENDING.with(|p| p.borrow_mut().push(msg));
    if !FLUSH_SCHEDULED.with(|f| f.replace(true)) {
        set_timeout(move || flush(state), BATCH_DELAY);
    }
}

fn flush(state: RwSignal<DashboardState>) {
    FLUSH_SCHEDULED.with(|f| f.set(false));
    let batch = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if !batch.is_empty() {
        let now = now_secs();
        state.update(|s| batch.into_iter().for_each(|msg| s.apply_at(msg, now)));
    }
}

fn schedule_reconnect(state: RwSignal<DashboardState>, connection: RwSignal<Connection>) {
    let failures = FAILURES.with(|f| {
        let n = f.get().saturating_add(1);
        f.set(n);
        n
    });
    if failures == 1 && !state.with_untracked(|s| s.loaded) {
        // No snapshot yet and the WebSocket failed: show the HTTP status meanwhile (a snapshot
        // arriving later replaces it; a late answer never rolls a snapshot back).
        leptos::task::spawn_local(async move {
            match fetch_status().await {
                Ok(status) => state.update(|s| s.apply_http_status(status)),
                Err(err) => leptos::logging::warn!("GET /api/status failed: {err}"),
            }
        });
    }
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
    let (status, text) = get_text("/api/status").await?;
    if !(200..300).contains(&status) {
        return Err(format!("HTTP {status}"));
    }
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// `GET /api/clients/{id}`; a 404 is [`DetailError::NotFound`].
pub async fn fetch_client(id: &str) -> Result<Detail, DetailError> {
    let encoded = String::from(js_sys::encode_uri_component(id));
    let (status, text) = get_text(&format!("/api/clients/{encoded}"))
        .await
        .map_err(DetailError::Other)?;
    match status {
        200..=299 => parse_detail(&text),
        404 => Err(DetailError::NotFound),
        _ => Err(DetailError::Other(
            serde_json::from_str::<ApiErrorBody>(&text)
                .map(|b| b.error.message)
                .unwrap_or_else(|_| format!("HTTP {status}")),
        )),
    }
}

/// The status code and body of a GET.
async fn get_text(url: &str) -> Result<(u16, String), String> {
    let window = web_sys::window().ok_or("no window")?;
    let response: web_sys::Response = JsFuture::from(window.fetch_with_str(url))
        .await
        .map_err(js_error)?
        .dyn_into()
        .map_err(js_error)?;
    let text = JsFuture::from(response.text().map_err(js_error)?)
        .await
        .map_err(js_error)?
        .as_string()
        .ok_or("body is not text")?;
    Ok((response.status(), text))
}

/// Puts `text` on the clipboard through `navigator.clipboard.writeText` (Chromium and Firefox;
/// only in a secure context such as `http://127.0.0.1`). Returns whether the API was there; the
/// `<code>` blocks also select whole on click for a manual copy.
pub fn copy_text(text: &str) -> bool {
    let attempt = || -> Result<(), JsValue> {
        let window = web_sys::window().ok_or(JsValue::NULL)?;
        let navigator = js_sys::Reflect::get(&window, &"navigator".into())?;
        let clipboard = js_sys::Reflect::get(&navigator, &"clipboard".into())?;
        if clipboard.is_undefined() || clipboard.is_null() {
            return Err(JsValue::NULL);
        }
        let write: js_sys::Function =
            js_sys::Reflect::get(&clipboard, &"writeText".into())?.dyn_into()?;
        let promise: js_sys::Promise = write.call1(&clipboard, &text.into())?.dyn_into()?;
        leptos::task::spawn_local(async move {
            if let Err(err) = JsFuture::from(promise).await {
                leptos::logging::warn!("clipboard: {}", js_error(err));
            }
        });
        Ok(())
    };
    attempt().is_ok()
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
