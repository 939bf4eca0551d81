//! Denizen: Cloudflare's Durable Objects, self-hosted, in Rust.
//!
//! Every named object gets one single-threaded mailbox and its own SQLite file; idle objects
//! hibernate while the gateway keeps their WebSockets open; alarms wake them on time. This facade
//! re-exports the runtime (objects, stubs, contexts, storage), the gateway (HTTP and WebSockets),
//! the agents layer (`denizen::agent`, mounted at `/agents/...` by [`agents::routes`]), the MCP
//! client (`denizen::mcp`), and [`App`](app::App): your types in a server with the command line
//! of the `denizen` binary (`serve`, `objects`, `sql`, `workflows`).
//!
//! Features (both on by default): `cli` for [`App::run`](app::App::run) (clap, and logs on
//! stderr through tracing-subscriber), `jemalloc` for jemalloc as the process's allocator (turn
//! it off to pick your own `#[global_allocator]`).
//!
//! ```
//! use denizen::{Ctx, DurableObject, Request, Response, Result, Runtime, http_util};
//! use denizen::http::StatusCode;
//!
//! #[derive(Default)]
//! struct Hello;
//!
//! impl DurableObject for Hello {
//!     async fn fetch(&mut self, ctx: &mut Ctx<Self>, _req: Request) -> Result<Response> {
//!         let name = ctx.id().name().unwrap_or("stranger").to_string();
//!         Ok(http_util::text(StatusCode::OK, &format!("hello, {name}\n")))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! # let dir = tempfile::tempdir()?;
//! let runtime = Runtime::builder().data_dir(dir.path()).object::<Hello>("hello").build()?;
//! let stub = runtime.namespace::<Hello>("hello")?.get_by_name("ada");
//! let resp = stub.fetch(denizen::http::Request::new(Default::default())).await?;
//! assert_eq!(resp.body().as_ref(), b"hello, ada\n");
//! runtime.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod agents;
pub mod app;
pub mod workflows_http;

/// The HTTP framework of the gateway's routes, for [`App::routes`](app::App::routes).
pub use axum;

pub use denizen_agents as agent;

pub use denizen_gateway as gateway;
pub use denizen_mcp as mcp;
pub use denizen_runtime::*;

/// Why jemalloc: see the `jemalloc` feature in Cargo.toml.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
