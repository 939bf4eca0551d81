//! Persistence of the manager's servers in the owning object's SQLite.
//!
//! Two tables in the object's own database:
//! - `mcp_servers`: URL, transport preference, the route that worked last (so a restarted object
//!   does not probe again), the static bearer token and the OAuth options;
//! - `mcp_oauth`: per server, the client registration (`client_id`, issuer), the tokens with the
//!   refresh token, and the PKCE verifiers of authorizations in progress.
//!
//! Writes join the object's current event transaction, so what an event saved is durable exactly
//! when that event commits. The usual calls are [`restore`] in `on_start` and [`save_all`] after
//! an event that connected, disconnected or authorized a server (or whenever
//! [`McpClientManager::subscribe`] reports a change, since refreshed tokens rotate).

use std::collections::HashMap;

use denizen_storage::Storage;
use serde::Deserialize;

use crate::{
    McpClientManager, Result,
    auth::{OAuthOptions, OAuthRecord, RegisteredClient},
    client::{Route, TransportPreference},
    manager::ServerConfig,
};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS mcp_servers (
    id TEXT PRIMARY KEY NOT NULL,
    url TEXT NOT NULL,
    transport TEXT NOT NULL,
    route TEXT,
    bearer_token TEXT,
    oauth_options TEXT
);
CREATE TABLE IF NOT EXISTS mcp_oauth (
    server_id TEXT PRIMARY KEY NOT NULL,
    client_id TEXT,
    client_secret TEXT,
    redirect_uri TEXT,
    issuer TEXT,
    credentials TEXT,
    pending TEXT NOT NULL
)";

#[derive(Deserialize)]
struct Row {
    id: String,
    url: String,
    transport: String,
    route: Option<String>,
    bearer_token: Option<String>,
    oauth_options: Option<String>,
}

#[derive(Deserialize)]
struct OAuthRow {
    server_id: String,
    client_id: Option<String>,
    client_secret: Option<String>,
    redirect_uri: Option<String>,
    issuer: Option<String>,
    credentials: Option<String>,
    pending: String,
}

/// Creates the tables if missing. Idempotent; call it from `on_start`.
pub fn migrate(storage: &mut Storage) -> Result<()> {
    storage.exec(SCHEMA, ())?;
    Ok(())
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Plain data types: serde_json cannot fail on them.
    serde_json::to_string(value).unwrap_or_default()
}

/// Inserts or replaces one server.
pub fn save_server(storage: &mut Storage, config: &ServerConfig) -> Result<()> {
    migrate(storage)?;
    storage.exec(
        "INSERT INTO mcp_servers (id, url, transport, route, bearer_token, oauth_options)
         VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT(id) DO UPDATE SET url = excluded.url, transport = excluded.transport,
           route = excluded.route, bearer_token = excluded.bearer_token,
           oauth_options = excluded.oauth_options",
        (
            config.id.as_str(),
            config.url.as_str(),
            to_json(&config.transport),
            config.route.as_ref().map(to_json),
            config.bearer_token.clone(),
            config.oauth.as_ref().map(to_json),
        ),
    )?;
    Ok(())
}

/// Inserts or replaces one server's OAuth record.
pub fn save_oauth(storage: &mut Storage, server_id: &str, record: &OAuthRecord) -> Result<()> {
    migrate(storage)?;
    let client = record.client.as_ref();
    storage.exec(
        "INSERT INTO mcp_oauth
           (server_id, client_id, client_secret, redirect_uri, issuer, credentials, pending)
         VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT(server_id) DO UPDATE SET client_id = excluded.client_id,
           client_secret = excluded.client_secret, redirect_uri = excluded.redirect_uri,
           issuer = excluded.issuer, credentials = excluded.credentials, pending = excluded.pending",
        (
            server_id,
            client.map(|c| c.client_id.clone()),
            client.and_then(|c| c.client_secret.clone()),
            client.map(|c| c.redirect_uri.clone()),
            client.and_then(|c| c.issuer.clone()),
            record.credentials.as_ref().map(to_json),
            to_json(&record.pending),
        ),
    )?;
    Ok(())
}

/// Removes one server and its OAuth record; true when the server existed.
pub fn delete_server(storage: &mut Storage, id: &str) -> Result<bool> {
    migrate(storage)?;
    storage.exec("DELETE FROM mcp_oauth WHERE server_id = ?", (id,))?;
    let cursor = storage.exec("DELETE FROM mcp_servers WHERE id = ?", (id,))?;
    Ok(cursor.rows_written() > 0)
}

/// Every saved server, in id order. Rows that no longer decode are skipped with a warning
/// rather than blocking the object's start.
pub fn load_servers(storage: &mut Storage) -> Result<Vec<ServerConfig>> {
    migrate(storage)?;
    let rows: Vec<Row> = storage
        .exec(
            "SELECT id, url, transport, route, bearer_token, oauth_options FROM mcp_servers
             ORDER BY id",
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
        let oauth: Option<OAuthOptions> = row
            .oauth_options
            .and_then(|o| serde_json::from_str(&o).ok());
        out.push(ServerConfig {
            id: row.id,
            url: row.url,
            transport,
            route,
            bearer_token: row.bearer_token,
            oauth,
        });
    }
    Ok(out)
}

/// Every saved OAuth record, by server id.
pub fn load_oauth(storage: &mut Storage) -> Result<HashMap<String, OAuthRecord>> {
    migrate(storage)?;
    let rows: Vec<OAuthRow> = storage
        .exec(
            "SELECT server_id, client_id, client_secret, redirect_uri, issuer, credentials, pending
             FROM mcp_oauth",
            (),
        )?
        .all()?;
    let mut out = HashMap::new();
    for row in rows {
        let credentials = row.credentials.and_then(|c| serde_json::from_str(&c).ok());
        let pending = serde_json::from_str(&row.pending).unwrap_or_default();
        let client = match (row.client_id, row.redirect_uri) {
            (Some(client_id), Some(redirect_uri)) => Some(RegisteredClient {
                client_id,
                client_secret: row.client_secret,
                redirect_uri,
                issuer: row.issuer,
            }),
            _ => None,
        };
        out.insert(
            row.server_id,
            OAuthRecord {
                client,
                credentials,
                pending,
            },
        );
    }
    Ok(out)
}

/// Saves every server of the manager with its OAuth record.
pub fn save_all(storage: &mut Storage, manager: &McpClientManager) -> Result<()> {
    for config in manager.configs() {
        save_server(storage, &config)?;
    }
    for (id, record) in manager.oauth_records() {
        save_oauth(storage, &id, &record)?;
    }
    Ok(())
}

/// Registers every saved server with the manager; they reconnect in the background with their
/// remembered routes and tokens, without asking the user again.
pub fn restore(storage: &mut Storage, manager: &McpClientManager) -> Result<()> {
    let configs = load_servers(storage)?;
    let oauth = load_oauth(storage)?;
    manager.restore(configs, oauth)
}
