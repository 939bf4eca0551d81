//! The chat page of `chat-agent`: `GET /chat-agent/<name>` (or `/chat-agent/` for the
//! conversation `default`) serves one HTML file, with its script and style inline, that talks
//! to `/agents/chat-agent/<name>` over the same WebSocket and `get-messages` route as the
//! `useAgentChat` client. It is built into the binary: no build step, nothing downloaded.

use denizen::axum::Router;
use denizen::axum::http::header;
use denizen::axum::routing::get;

/// The page, the same for every conversation: its script reads the name from the address.
const PAGE: &str = include_str!("chat_page.html");

/// What the page may load: its own inline script and style, and connections to this server
/// only (the agent's socket and history). Model output is only ever shown as text, and this
/// stops anything slipped into the page from calling elsewhere.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /chat-agent`, `/chat-agent/` and `/chat-agent/<name>`: the chat page.
pub(crate) fn routes() -> Router {
    let page = get(|| async {
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CONTENT_SECURITY_POLICY, CSP),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            PAGE,
        )
    });
    Router::new()
        .route("/chat-agent", page.clone())
        .route("/chat-agent/", page.clone())
        .route("/chat-agent/{name}", page)
}
