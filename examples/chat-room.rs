//! A chat room as a durable object: one object per room, members on hibernatable WebSockets,
//! the history in the room's own SQLite database.
//!
//! The room accepts each socket with `ctx.accept_websocket`, so the runtime holds the sockets,
//! not the object: an idle room leaves memory while its members stay connected, and the next
//! message wakes it. Each message is stored, then broadcast to every member (the sender too).
//!
//! Run it:
//!
//! ```text
//! cargo run --example chat-room -- serve
//! ```
//!
//! Talk in room `lobby` as `ada` (and as someone else in another terminal):
//!
//! ```text
//! $ websocat 'ws://127.0.0.1:8787/objects/room/lobby?user=ada'
//! {"messages":[],"type":"history"}
//! hello
//! {"at":1764690000000,"text":"hello","type":"message","user":"ada"}
//! $ curl http://127.0.0.1:8787/objects/room/lobby
//! {"messages":[{"at":1764690000000,"text":"hello","user":"ada"}]}
//! ```
//!
//! `curl http://127.0.0.1:8787/rooms` lists the rooms (a route of the app's own, beside the
//! gateway's). An authentication hook refuses sockets opened by pages of other sites (403).
//!
//! A message longer than 4096 bytes gets `{"error":..,"type":"error"}` back and is not kept; a
//! binary frame closes the socket (1003); a missing or odd user name is answered 400.

use denizen::app::App;
use denizen::axum::Router;
use denizen::axum::body::Body;
use denizen::axum::routing::get;
use denizen::gateway::{Gateway, Rejection};
use denizen::http::{self, StatusCode};
use denizen::time::now_ms;
use denizen::{
    Ctx, DurableObject, Frame, Request, Response, Result, Upgrade, WebSocket, http_util,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// How many recent messages a newcomer (or `GET`) receives.
const HISTORY: i64 = 50;
/// The longest message, in bytes; longer ones are refused with an error frame.
const MAX_TEXT: usize = 4096;
/// The longest user name, in bytes.
const MAX_USER: usize = 32;

/// A chat room. It keeps nothing in memory: the members are the runtime's sockets (each with
/// its user name attached) and the history is in SQLite, so it can hibernate at any time.
#[derive(Debug, Default)]
struct Room;

/// A message as the history holds it.
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    user: String,
    text: String,
    /// When the room received it, in ms since the Unix epoch.
    at: i64,
}

impl DurableObject for Room {
    // Run on the room's database before its first event.
    const SCHEMA: &'static str = "CREATE TABLE IF NOT EXISTS messages(
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user TEXT NOT NULL,
        text TEXT NOT NULL,
        at INTEGER NOT NULL)";

    async fn fetch(&mut self, ctx: &mut Ctx<Self>, req: Request) -> Result<Response> {
        // A plain GET reads the history; a WebSocket upgrade joins the room.
        if req.extensions().get::<Upgrade>().is_none() {
            let messages = history(ctx)?;
            return Ok(http_util::json(
                StatusCode::OK,
                &json!({ "messages": messages }),
            ));
        }
        let Some(user) = user_of(&req) else {
            return Ok(http_util::text(
                StatusCode::BAD_REQUEST,
                "join with ?user=<name>: 1 to 32 letters, digits, '-' or '_'\n",
            ));
        };
        let ws = ctx.accept_websocket(&req, &[])?;
        // The attachment survives hibernation: it is how the room knows who sent a message.
        ctx.set_attachment(ws, &user)?;
        let messages = history(ctx)?;
        ctx.send(
            ws,
            json!({ "type": "history", "messages": messages }).to_string(),
        );
        Ok(http_util::switching_protocols())
    }

    async fn websocket_message(
        &mut self,
        ctx: &mut Ctx<Self>,
        ws: WebSocket,
        frame: Frame,
    ) -> Result<()> {
        let Frame::Text(text) = frame else {
            ctx.close(ws, 1003, "send text messages");
            return Ok(());
        };
        if text.is_empty() || text.len() > MAX_TEXT {
            let error = format!("a message is 1 to {MAX_TEXT} bytes");
            ctx.send(ws, json!({ "type": "error", "error": error }).to_string());
            return Ok(());
        }
        let user: String = ctx.attachment(ws)?.unwrap_or_default();
        let at = now_ms();
        ctx.storage().exec(
            "INSERT INTO messages(user, text, at) VALUES (?, ?, ?)",
            (user.as_str(), text.as_str(), at),
        )?;
        // Sent once the insert is committed: nobody sees a message the room could still lose.
        let message = json!({ "type": "message", "user": user, "text": text, "at": at });
        ctx.broadcast(None, message.to_string(), None);
        Ok(())
    }
}

/// The last [`HISTORY`] messages, oldest first.
fn history(ctx: &mut Ctx<Room>) -> Result<Vec<Message>> {
    let mut messages: Vec<Message> = ctx
        .storage()
        .exec(
            "SELECT user, text, at FROM messages ORDER BY id DESC LIMIT ?",
            [HISTORY.into()],
        )?
        .all()?;
    messages.reverse();
    Ok(messages)
}

/// The `user` query parameter, if it is a name the room accepts (no escapes to decode).
fn user_of(req: &Request) -> Option<String> {
    let query = req.uri().query().unwrap_or("");
    let user = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("user="))?;
    let valid = !user.is_empty()
        && user.len() <= MAX_USER
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then(|| user.to_string())
}

/// The app's own route: `GET /rooms` lists the rooms with their size and whether they are in
/// memory now, from the runtime's catalog (no room is woken for it).
fn rooms(gateway: &Gateway) -> Router {
    let runtime = gateway.runtime().clone();
    Router::new().route(
        "/rooms",
        get(move || async move {
            let rooms = match runtime.namespace::<Room>("room") {
                Ok(rooms) => rooms.list().await,
                Err(e) => Err(e),
            };
            match rooms {
                Ok(rooms) => {
                    let rooms: Vec<_> = rooms
                        .into_iter()
                        .map(|r| json!({ "name": r.name, "bytes": r.size_bytes, "awake": r.live }))
                        .collect();
                    http_util::json(StatusCode::OK, &json!({ "rooms": rooms }))
                }
                Err(e) => http_util::text(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n")),
            }
            .map(Body::from)
        }),
    )
}

/// The authentication hook, which sees every request to a room before the room does: a
/// browser page of another site may not open a socket into a room (browsers send its
/// `Origin`; a page on this server, or a program, is let in).
fn same_site(parts: &http::request::Parts) -> std::result::Result<(), Rejection> {
    let Some(origin) = parts.headers.get(http::header::ORIGIN) else {
        return Ok(());
    };
    let host = parts.headers.get(http::header::HOST);
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, host)| host);
    match (origin_host, host.and_then(|h| h.to_str().ok())) {
        (Some(origin), Some(host)) if origin == host => Ok(()),
        _ => Err(Rejection::forbidden(
            "rooms are open to pages of this site only",
        )),
    }
}

fn main() -> std::process::ExitCode {
    // Rooms at /objects/room/<name>; `chat-room --help` lists the commands and settings.
    App::new("chat-room")
        .object::<Room>("room")
        .routes(rooms)
        .auth(same_site)
        .run()
}
