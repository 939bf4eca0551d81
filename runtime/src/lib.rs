//! The object host of Denizen: named durable objects, each with one mailbox and its own SQLite
//! file.
//!
//! Why it exists: Cloudflare's Durable Objects give every named thing a single-threaded actor with
//! private, strongly consistent storage; this crate gives the same guarantees in one process on
//! your machine, without HTTP (the gateway crate plugs in on top):
//!
//! - **One instance per id, one event at a time.** A [`Stub`] is made without I/O; the object is
//!   activated on first use, runs each event (fetch, RPC, WebSocket event, alarm, task result) to
//!   completion with `&mut self`, in arrival order.
//! - **Implicit transactions and the output gate.** All writes of an event commit together when
//!   the handler returns; its reply, socket sends and spawned tasks leave only after that commit.
//!   A failing or panicking handler is rolled back and the instance reset.
//! - **Slow work off the turn.** [`Ctx::spawn`] runs a future (an HTTP call, an LLM request)
//!   outside the mailbox and hands its output back as an event; [`Ctx::respond_later`] does the
//!   same for a `fetch` whose caller waits for the answer, which a later event makes (the Rust
//!   form of awaiting a network call inside a Durable Object's `fetch`). Neither holds the
//!   mailbox, both start after the commit, keep the object from hibernating while they run and
//!   are not bounded by the event deadline; an answer still pending at shutdown is
//!   [`Error::ShuttingDown`].
//! - **Hibernation.** After `idle_timeout` without events or background work the instance is
//!   dropped and its database closed; its WebSockets stay registered (with tags and attachment)
//!   and the next event rebuilds it.
//! - **Alarms** at least once, across restarts, retried with backoff ([`Options::alarm_retry`]:
//!   2 s, ×2, ±25%, 6 retries).
//! - **Overload is explicit**: a full mailbox answers [`Error::Overloaded`].
//!
//! For latency, an application that builds its own tokio runtime can add [`IdlePoll`] (what
//! `denizen serve` runs): idle CPUs poll briefly instead of halting, so the next message needs no
//! wake-up of a halted virtual CPU.
//!
//! ```
//! use denizen_runtime::{Ctx, DurableObject, Handler, Message, Result, Runtime};
//!
//! #[derive(Default)]
//! struct Counter;
//!
//! struct Increment;
//! impl Message for Increment {
//!     type Reply = i64;
//! }
//!
//! impl DurableObject for Counter {
//!     // In place before the first event: a new object's file is created with it.
//!     const SCHEMA: &'static str = "CREATE TABLE IF NOT EXISTS c(k INTEGER PRIMARY KEY, n INTEGER)";
//! }
//!
//! impl Handler<Increment> for Counter {
//!     async fn handle(&mut self, ctx: &mut Ctx<Self>, _: Increment) -> Result<i64> {
//!         let n = ctx
//!             .storage()
//!             .exec(
//!                 "INSERT INTO c(k, n) VALUES (1, 1)
//!                  ON CONFLICT(k) DO UPDATE SET n = n + 1 RETURNING n",
//!                 [],
//!             )?
//!             .one()?;
//!         Ok(n)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! # let dir = tempfile::tempdir()?;
//! let runtime = Runtime::builder()
//!     .data_dir(dir.path())
//!     .object::<Counter>("counter")
//!     .build()?;
//! let alice = runtime.namespace::<Counter>("counter")?.get_by_name("alice");
//! assert_eq!(alice.call(Increment).await?, 1);
//! assert_eq!(alice.call(Increment).await?, 2);
//! runtime.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod actor;
pub mod admin;
mod alarm;
mod ctx;
mod error;
pub mod http_util;
mod id;
mod idle_poll;
mod later;
mod metrics;
mod namespace;
mod object;
pub mod retry;
mod runtime;
mod socket;
pub mod time;

pub use bytes::Bytes;
pub use ctx::Ctx;
pub use denizen_storage as storage;
pub use denizen_storage::{Cursor, Durability, ListOptions, Storage, Value, params};
pub use error::{Error, Result};
pub use http;
pub use id::{MAX_NAME_LEN, ObjectId};
pub use idle_poll::IdlePoll;
pub use metrics::{Histogram, Metrics};
pub use namespace::{Namespace, Stub};
pub use object::{AlarmInfo, DurableObject, Handler, Message, Request, Response};
pub use runtime::{Builder, ObjectInfo, Options, Runtime};
pub use socket::{
    Backlog, Delivery, Frame, MAX_ATTACHMENT_SIZE, MAX_AUTO_RESPONSE_LENGTH, MAX_TAG_LENGTH,
    MAX_TAGS, Outgoing, Refused, SocketHandle, SocketId, Upgrade, WebSocket,
};
