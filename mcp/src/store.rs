//! Persistence of the manager's server list in the owning object's SQLite.
//!
//! One table, `mcp_servers`, in the object's own database: the URL, the transport preference,
//! the route that worked last (so a restarted object does not probe again) and the bearer token
//! the application gave. Writes join the object's current event transaction, so a server added in
//! an event is durable exactly when that event commits.

use denizen_storage::Storage;
use serde::Deserialize;

use crate::{
    Result,
    client::{Route, TransportPreference},
    manager::ServerConfig,
};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS mcp_servers (
    id TEXT PRIMARY KEY NOT NULL,
    url TEXT NOT NULL,
    transport TEXT NOT NULL,
    route TEXT,
    bearer_token TEXT
)";

#[derive(Deserialize)]
struct Row {
    id: String,
    url: String,
    transport: String,
    route: Option<String>,
    bearer_token: Option<String>,
}

/// Creates the table if it is missing. Idempotent; call it from `on_start`.
pub fn migrate(storage: &mut Storage) -> Result<()> {
    storage.exec(SCHEMA, ())?;
    Ok(())
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // These enums serialize to plain strings; serde_json cannot fail on them.
    serde_json::to_string(value).unwrap_or_default()
}

/// Inserts or replaces one server.
pub fn save_server(storage: &mut Storage, config: &ServerConfig) -> Result<()> {
    migrate(storage)?;
    storage.exec(
        "INSERT INTO mcp_servers (id, url, transport, route, bearer_token) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT(id) DO UPDATE SET url = excluded.url, transport = excluded.transport,
           route = excluded.route, bearer_token = excluded.bearer_token",
        (
            config.id.as_str(),
            config.url.as_str(),
            to_json(&config.transport),
            config.route.as_ref().map(to_json),
            config.bearer_token.clone(),
        ),
    )?;
    Ok(())
}

/// Removes one server; true when it existed.
pub fn delete_server(storage: &mut Storage, id: &str) -> Result<bool> {
    migrate(storage)?;
    let cursor = storage.exec("DELETE FROM mcp_servers WHERE id = ?", (id,))?;
    Ok(cursor.rows_written() > 0)
}

/// Every saved server, in id order. Rows that no longer decode (an older format) are skipped
/// with a warning rather than blocking the object's start.
pub fn load_servers(storage: &mut Storage) -> Result<Vec<ServerConfig>> {
    migrate(storage)?;
    let rows: Vec<Row> = storage
        .exec(
            "SELECT id, url, transport, route, bearer_token FROM mcp_servers ORDER BY id",
            (),
        )?
        .all()?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let transport: TransportPreference = match serde_json::from_str(&row.transport) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(id = %row.id, error = %e, "skipping an MCP server row with an unknown transport");
                continue;
            }
        };
        let route: Option<Route> = row.route.and_then(|r| serde_json::from_str(&r).ok());
        out.push(ServerConfig {
            id: row.id,
            url: row.url,
            transport,
            route,
            bearer_token: row.bearer_token,
        });
    }
    Ok(out)
}
