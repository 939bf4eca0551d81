//! The counter app embedded in an application of its own: the way a Worker fronts a Durable
//! Object. The app mounts its own route beside the gateway's and calls the object through a stub.
//!
//! ```sh
//! cargo run --example counter
//! curl -X POST localhost:8788/hits/home     # {"count":1}
//! curl localhost:8788/objects/counter/home  # the gateway's own route to the same object
//! ```

use anyhow::{Context, Result};
use axum::extract::{Path, Request};
use axum::routing::post;
use denizen::apps::counter::Counter;
use denizen::gateway::{self, Gateway};
use denizen::{Options, Runtime};

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt::init();
    let options = Options {
        data_dir: "./data-counter-example".into(),
        ..Options::default()
    };
    let runtime = Runtime::builder()
        .options(options)
        .object::<Counter>("counter")
        .build()
        .context("opening the data directory")?;
    let gateway = Gateway::new(runtime, gateway::Options::default());
    let forwarder = gateway.clone();
    // `POST /hits/<page>` counts a page hit: the object sees the request at `/increment`.
    let app = gateway.router().route(
        "/hits/{page}",
        post(
            move |Path(page): Path<String>, mut req: Request| async move {
                *req.uri_mut() = http::Uri::from_static("/increment");
                forwarder.forward("counter", &page, req).await
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8788").await?;
    eprintln!("counter example on http://{}", listener.local_addr()?);
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    gateway.serve_router(listener, app, ctrl_c).await?;
    Ok(())
}
