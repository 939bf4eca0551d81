//! `chat`: a room per name. Connect a WebSocket to `/objects/chat/<room>?user=<name>`; each text
//! message is broadcast to everyone in the room (the sender included) as
//! `{"type":"message","user":..,"text":..,"at":<ms>}` and kept in the room's SQLite history. A
//! joining client first gets `{"type":"history","messages":[..]}` with the recent messages.
//! `GET /objects/chat/<room>` answers the history as JSON. The room hibernates while its clients
//! stay connected; `ping` is answered with `pong` without waking it.

use denizen::http::StatusCode;
use denizen::time::now_ms;
use denizen::{
    Ctx, DurableObject, Frame, Request, Response, Result, Upgrade, WebSocket, http_util,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Messages a joining client receives.
pub(crate) const HISTORY_LIMIT: i64 = 100;
/// Longest accepted message, in bytes.
pub(crate) const MAX_TEXT: usize = 16 * 1024;
/// Longest user name, in bytes.
pub(crate) const MAX_USER: usize = 64;

/// A chat room: WebSocket members, the history in its database.
#[derive(Debug, Default)]
pub(crate) struct ChatRoom;

/// One message of the history, as members receive it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ChatMessage {
    /// Who sent it (the `user` query parameter of their socket).
    pub(crate) user: String,
    /// What they wrote.
    pub(crate) text: String,
    /// When the room received it, in ms since the Unix epoch.
    pub(crate) at: i64,
}

fn history(ctx: &mut Ctx<ChatRoom>) -> Result<Vec<ChatMessage>> {
    let mut messages: Vec<ChatMessage> = ctx
        .storage()
        .exec(
            "SELECT user, text, at FROM messages ORDER BY id DESC LIMIT ?",
            [HISTORY_LIMIT.into()],
        )?
        .all()?;
    messages.reverse();
    Ok(messages)
}

fn user_of(req: &Request) -> Option<String> {
    let query = req.uri().query().unwrap_or("");
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.into_owned())
}

impl DurableObject for ChatRoom {
    const SCHEMA: &'static str = "CREATE TABLE IF NOT EXISTS messages(
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user TEXT NOT NULL,
        text TEXT NOT NULL,
        at INTEGER NOT NULL)";

    async fn on_start(&mut self, ctx: &mut Ctx<Self>) -> Result<()> {
        ctx.set_auto_response(Some(("ping", "pong")))?;
        Ok(())
    }

    async fn fetch(&mut self, ctx: &mut Ctx<Self>, req: Request) -> Result<Response> {
        if req.extensions().get::<Upgrade>().is_none() {
            let messages = history(ctx)?;
            return Ok(http_util::json(
                StatusCode::OK,
                &json!({ "messages": messages }),
            ));
        }
        let user = user_of(&req).unwrap_or_default();
        if user.is_empty() || user.len() > MAX_USER {
            return Ok(http_util::text(
                StatusCode::BAD_REQUEST,
                "connect with ?user=<name> (1 to 64 bytes)\n",
            ));
        }
        let tag = format!("user:{user}");
        let ws = ctx.accept_websocket(&req, &[&tag])?;
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
            ctx.close(ws, 1003, "the chat accepts text messages only");
            return Ok(());
        };
        if text.len() > MAX_TEXT {
            ctx.send(
                ws,
                json!({ "type": "error", "error": format!("messages are limited to {MAX_TEXT} bytes") })
                    .to_string(),
            );
            return Ok(());
        }
        let user: String = ctx.attachment(ws)?.unwrap_or_default();
        let at = now_ms();
        ctx.storage().exec(
            "INSERT INTO messages(user, text, at) VALUES (?, ?, ?)",
            (user.as_str(), text.as_str(), at),
        )?;
        let frame = json!({ "type": "message", "user": user, "text": text, "at": at }).to_string();
        ctx.broadcast(None, frame, None);
        Ok(())
    }
}
