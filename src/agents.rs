//! The `/agents/<class>/<name>[/...]` route of the Agents SDK, mounted beside the gateway's own.
//!
//! The JavaScript client builds this path from its `agent` option in kebab-case (`CounterAgent` →
//! `counter-agent`) and its `name`; WebSocket upgrades and plain HTTP both go to the agent named
//! `<name>` in namespace `<class>`, which sees the request's URI unchanged (`?_pk=` and the
//! client's `query` included).

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use denizen_gateway::Gateway;
use http::StatusCode;

/// A router serving `/agents/<class>/<name>[/...]` for the agent namespaces listed: merge it
/// into [`Gateway::router`]. An unknown class answers 400, as the Agents SDK does.
pub fn routes(gateway: &Gateway, namespaces: &[&str]) -> Router {
    let namespaces: Arc<[String]> = namespaces.iter().map(|s| s.to_string()).collect();
    let gateway = gateway.clone();
    Router::new().route(
        "/agents/{*path}",
        any(move |req: Request| {
            let gateway = gateway.clone();
            let namespaces = namespaces.clone();
            async move {
                let path = req.uri().path().strip_prefix("/agents/").unwrap_or("");
                // Decoded exactly as /objects decodes: `caf%C3%A9` is the agent `café`.
                let Some((class, name, _)) = denizen_gateway::split_path(path) else {
                    return (
                        StatusCode::NOT_FOUND,
                        "address an agent as /agents/<class>/<name>[/path]\n",
                    )
                        .into_response();
                };
                if !namespaces.contains(&class) {
                    return (
                        StatusCode::BAD_REQUEST,
                        format!(
                            "Invalid request: no agent class `{class}`; this server has {}\n",
                            namespaces.join(", ")
                        ),
                    )
                        .into_response();
                }
                let resp: Response = gateway.forward(&class, &name, req).await;
                resp
            }
        }),
    )
}
