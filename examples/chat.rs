//! The chat room embedded in an application of its own, with an authentication hook: a client
//! must name itself (`?user=`) before its WebSocket reaches a room, and rooms live at
//! `/rooms/<room>` instead of the gateway's `/objects/chat/<room>`.
//!
//! ```sh
//! cargo run --example chat
//! websocat 'ws://localhost:8789/rooms/lobby?user=ada'
//! ```

use anyhow::{Context, Result};
use axum::extract::{Path, Request};
use axum::routing::any;
use denizen::apps::chat::ChatRoom;
use denizen::gateway::{self, Gateway, Rejection};
use denizen::{Options, Runtime};

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt::init();
    let options = Options {
        data_dir: "./data-chat-example".into(),
        idle_timeout: std::time::Duration::from_secs(5),
        ..Options::default()
    };
    let runtime = Runtime::builder()
        .options(options)
        .object::<ChatRoom>("chat")
        .build()
        .context("opening the data directory")?;
    // The hook sees every request and upgrade before any room does.
    let gateway = Gateway::new(runtime, gateway::Options::default()).with_auth(|parts| {
        let named = parts.uri.query().is_some_and(|q| {
            q.split('&')
                .any(|kv| kv.starts_with("user=") && kv.len() > 5)
        });
        if named {
            Ok(())
        } else {
            Err(Rejection::unauthorized("join with ?user=<your name>"))
        }
    });
    let forwarder = gateway.clone();
    let app = gateway.router().route(
        "/rooms/{room}",
        any(move |Path(room): Path<String>, req: Request| async move {
            forwarder.forward("chat", &room, req).await
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8789").await?;
    eprintln!(
        "chat example on ws://{}/rooms/<room>?user=<name>",
        listener.local_addr()?
    );
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    gateway.serve_router(listener, app, ctrl_c).await?;
    Ok(())
}
