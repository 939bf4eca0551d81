//! The chat agent's tables in the agent's SQLite: the transcript (one row per message, in
//! order) and the log of the running turn's chunks (for resume; deleted when the reply is
//! persisted).

use std::collections::{HashMap, HashSet};

use denizen_runtime::{Error, Result, Storage};
use serde::Deserialize;

use crate::chat::message::UiMessage;

/// Creates the tables (idempotent; run once per activation, on the first chat event).
pub(crate) fn ensure(storage: &mut Storage) -> Result<()> {
    storage.exec(
        "CREATE TABLE IF NOT EXISTS denizen_chat_messages(
            id TEXT PRIMARY KEY NOT NULL, pos INTEGER NOT NULL, message TEXT NOT NULL)",
        (),
    )?;
    storage.exec(
        "CREATE INDEX IF NOT EXISTS denizen_chat_messages_pos ON denizen_chat_messages(pos)",
        (),
    )?;
    storage.exec(
        "CREATE TABLE IF NOT EXISTS denizen_chat_stream(
            request_id TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL,
            PRIMARY KEY(request_id, seq))",
        (),
    )?;
    // The last turn's error, replayed to resume probes until the next turn (one row at most).
    storage.exec(
        "CREATE TABLE IF NOT EXISTS denizen_chat_last_error(
            request_id TEXT PRIMARY KEY NOT NULL, body TEXT NOT NULL)",
        (),
    )?;
    // The last request's extra body and client tools (a continuation after a hibernation
    // runs with them), and which message a continuation's stream log continues.
    storage.exec(
        "CREATE TABLE IF NOT EXISTS denizen_chat_context(
            key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)",
        (),
    )?;
    Ok(())
}

#[derive(Deserialize)]
struct Row {
    message: String,
}

/// The transcript, in order.
pub(crate) fn load(storage: &mut Storage) -> Result<Vec<UiMessage>> {
    let rows: Vec<Row> = storage
        .exec("SELECT message FROM denizen_chat_messages ORDER BY pos", ())?
        .all()?;
    rows.into_iter()
        .map(|row| {
            serde_json::from_str(&row.message).map_err(|e| {
                Error::msg(format!(
                    "a stored chat message does not decode ({e}); the table denizen_chat_messages was changed by hand"
                ))
            })
        })
        .collect()
}

/// Makes the stored transcript `messages`, given what is stored now (`stored`, as [`load`]
/// gave it) and the ids that changed: rows are written only where a message changed or moved,
/// and rows of messages no longer in `messages` are deleted. Row `pos` is always the index.
pub(crate) fn save(
    storage: &mut Storage,
    stored: &[UiMessage],
    messages: &[UiMessage],
    changed: &HashSet<&str>,
) -> Result<()> {
    let ranks: HashMap<&str, usize> = stored
        .iter()
        .enumerate()
        .map(|(i, m)| (m.id.as_str(), i))
        .collect();
    let kept: HashSet<&str> = messages.iter().map(|m| m.id.as_str()).collect();
    for old in stored {
        if !kept.contains(old.id.as_str()) {
            storage.exec(
                "DELETE FROM denizen_chat_messages WHERE id = ?",
                (old.id.as_str(),),
            )?;
        }
    }
    for (pos, message) in messages.iter().enumerate() {
        let moved = ranks.get(message.id.as_str()) != Some(&pos);
        if moved || changed.contains(message.id.as_str()) {
            let json = serde_json::to_string(message)
                .map_err(|e| Error::msg(format!("could not encode a chat message: {e}")))?;
            storage.exec(
                "INSERT OR REPLACE INTO denizen_chat_messages(id, pos, message) VALUES (?, ?, ?)",
                (message.id.as_str(), pos as i64, json.as_str()),
            )?;
        }
    }
    Ok(())
}

/// Appends a chunk of a turn to the stream log.
pub(crate) fn log_chunk(
    storage: &mut Storage,
    request_id: &str,
    seq: u64,
    body: &str,
) -> Result<()> {
    storage.exec(
        "INSERT OR REPLACE INTO denizen_chat_stream(request_id, seq, body) VALUES (?, ?, ?)",
        (request_id, seq as i64, body),
    )?;
    Ok(())
}

/// Drops a turn's stream log (its message is persisted).
pub(crate) fn drop_log(storage: &mut Storage, request_id: &str) -> Result<()> {
    storage.exec(
        "DELETE FROM denizen_chat_stream WHERE request_id = ?",
        (request_id,),
    )?;
    storage.exec(
        "DELETE FROM denizen_chat_context WHERE key = ?",
        (continues_key(request_id).as_str(),),
    )?;
    Ok(())
}

fn continues_key(request_id: &str) -> String {
    format!("continues:{request_id}")
}

fn set_context(storage: &mut Storage, key: &str, value: &str) -> Result<()> {
    storage.exec(
        "INSERT OR REPLACE INTO denizen_chat_context(key, value) VALUES (?, ?)",
        (key, value),
    )?;
    Ok(())
}

fn context(storage: &mut Storage, key: &str) -> Result<Option<String>> {
    Ok(storage
        .exec(
            "SELECT value FROM denizen_chat_context WHERE key = ?",
            (key,),
        )?
        .first()?)
}

/// Notes that the stream of `request_id` is a continuation of message `message_id`.
pub(crate) fn set_continues(
    storage: &mut Storage,
    request_id: &str,
    message_id: &str,
) -> Result<()> {
    set_context(storage, &continues_key(request_id), message_id)
}

/// The message the stream of `request_id` continues, if it is a continuation.
pub(crate) fn continues(storage: &mut Storage, request_id: &str) -> Result<Option<String>> {
    context(storage, &continues_key(request_id))
}

/// The last chat request's context, for the continuations after it.
#[derive(Clone, Debug, Default, serde::Serialize, Deserialize)]
pub(crate) struct RequestContext {
    pub(crate) body: Option<serde_json::Map<String, serde_json::Value>>,
    pub(crate) client_tools: Vec<crate::chat::request::ClientTool>,
}

/// Remembers the last request's context.
pub(crate) fn set_request_context(storage: &mut Storage, context: &RequestContext) -> Result<()> {
    let json = serde_json::to_string(context)
        .map_err(|e| Error::msg(format!("could not encode the chat request context: {e}")))?;
    set_context(storage, "request", &json)
}

/// The last request's context (empty before the first request, or if it does not decode).
pub(crate) fn request_context(storage: &mut Storage) -> Result<RequestContext> {
    Ok(context(storage, "request")?
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default())
}

/// Deletes the transcript and every stream log.
pub(crate) fn clear(storage: &mut Storage) -> Result<()> {
    storage.exec("DELETE FROM denizen_chat_messages", ())?;
    storage.exec("DELETE FROM denizen_chat_stream", ())?;
    storage.exec("DELETE FROM denizen_chat_last_error", ())?;
    storage.exec("DELETE FROM denizen_chat_context", ())?;
    Ok(())
}

/// Remembers that turn `request_id` ended with the model's error `text` (its stream log is
/// kept with it, to replay).
pub(crate) fn set_last_error(storage: &mut Storage, request_id: &str, text: &str) -> Result<()> {
    forget_last_error(storage)?;
    storage.exec(
        "INSERT INTO denizen_chat_last_error(request_id, body) VALUES (?, ?)",
        (request_id, text),
    )?;
    Ok(())
}

#[derive(Deserialize)]
struct LastError {
    request_id: String,
    body: String,
}

/// The remembered error: `(request id, error text)`.
pub(crate) fn last_error(storage: &mut Storage) -> Result<Option<(String, String)>> {
    let row: Option<LastError> = storage
        .exec(
            "SELECT request_id, body FROM denizen_chat_last_error LIMIT 1",
            (),
        )?
        .first()?;
    Ok(row.map(|r| (r.request_id, r.body)))
}

/// Forgets the remembered error and its stream log (a new turn begins).
pub(crate) fn forget_last_error(storage: &mut Storage) -> Result<()> {
    if let Some((request_id, _)) = last_error(storage)? {
        drop_log(storage, &request_id)?;
    }
    storage.exec("DELETE FROM denizen_chat_last_error", ())?;
    Ok(())
}

#[derive(Deserialize)]
struct Logged {
    seq: i64,
    body: String,
}

/// A turn's logged chunks, `(seq, chunk JSON)` in order.
pub(crate) fn log(storage: &mut Storage, request_id: &str) -> Result<Vec<(u64, String)>> {
    let rows: Vec<Logged> = storage
        .exec(
            "SELECT seq, body FROM denizen_chat_stream WHERE request_id = ? ORDER BY seq",
            (request_id,),
        )?
        .all()?;
    Ok(rows
        .into_iter()
        .map(|r| (u64::try_from(r.seq).unwrap_or_default(), r.body))
        .collect())
}

/// The request id of a logged stream (one left by a turn whose producer is gone, when no turn
/// runs).
pub(crate) fn logged_stream(storage: &mut Storage) -> Result<Option<String>> {
    Ok(storage
        .exec(
            "SELECT request_id FROM denizen_chat_stream
             WHERE request_id NOT IN (SELECT request_id FROM denizen_chat_last_error)
             ORDER BY rowid LIMIT 1",
            (),
        )?
        .first()?)
}
