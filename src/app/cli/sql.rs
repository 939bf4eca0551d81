//! `denizen sql`: one object's database, through the running server or from its file.

use std::path::Path;

use std::io::Write;

use denizen_runtime::admin::{self, Address};
use denizen_runtime::{Durability, Value};

use super::escape::printable;
use super::remote::{Remote, running_server, segment};
use crate::app::Error;

/// One `denizen sql` invocation.
pub(super) struct Query<'a> {
    pub(super) dir: &'a Path,
    pub(super) namespace: &'a str,
    pub(super) object: &'a str,
    pub(super) by_id: bool,
    pub(super) query: &'a str,
    /// `--server`: the server named on the command line, if any.
    pub(super) server: Option<String>,
    /// The admin token (given, or read from the data directory).
    pub(super) token: Option<String>,
}

/// Runs the query through the server running on the data directory, or on the file.
pub(super) fn run(q: Query<'_>) -> Result<(), Error> {
    let Query {
        dir,
        namespace,
        object,
        by_id: id,
        query,
        server,
        token,
    } = q;
    let from_address_file = server.is_none();
    let server = server.or_else(|| running_server(dir));
    if let Some(url) = server {
        match remote_sql(&url, token.as_deref(), namespace, object, id, query) {
            Ok(answer) => return print_answer(&answer),
            // The address file outlived a server killed without a chance to remove it.
            Err(Remote::Unreachable(e)) if from_address_file => {
                tracing::debug!(%url, error = %e, "no server answers for this data directory; opening the file");
            }
            Err(Remote::Unreachable(message)) => {
                return Err(Error::Unreachable { url, message });
            }
            Err(Remote::Refused(message)) => return Err(Error::Refused(message)),
        }
    }
    let address = if id {
        Address::Id(object)
    } else {
        Address::Name(object)
    };
    let mut opened = admin::open_object(dir, namespace, address, Durability::Normal)?;
    let cursor = opened.storage.exec(query, [])?;
    opened.storage.commit()?;
    let rows: Vec<Vec<String>> = cursor
        .rows()
        .iter()
        .map(|row| row.iter().map(show).collect())
        .collect();
    print_table(
        cursor.columns(),
        &rows,
        &format!(
            "{} read, {} written",
            cursor.rows_read(),
            cursor.rows_written()
        ),
    )
}

/// Runs the query through a server's `/admin/sql` route.
pub(super) fn remote_sql(
    url: &str,
    token: Option<&str>,
    namespace: &str,
    object: &str,
    by_id: bool,
    query: &str,
) -> std::result::Result<serde_json::Value, Remote> {
    let mut endpoint = format!(
        "{}/admin/sql/{}/{}",
        url.trim_end_matches('/'),
        segment(namespace),
        segment(object)
    );
    if by_id {
        endpoint.push_str("?id");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Remote::Unreachable(e.to_string()))?;
    rt.block_on(async {
        let mut req = reqwest::Client::new()
            .post(&endpoint)
            .json(&serde_json::json!({ "query": query }));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Remote::Unreachable(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| Remote::Unreachable(e.to_string()))?;
        if !status.is_success() {
            return Err(Remote::Refused(format!(
                "the server at {url} answered {status}: {}",
                body.trim()
            )));
        }
        serde_json::from_str(&body).map_err(|e| {
            Remote::Refused(format!(
                "the server at {url} answered something else than SQL results: {e}"
            ))
        })
    })
}

/// A result as `POST /admin/sql` answers it, printed like one read from the file.
pub(super) fn print_answer(answer: &serde_json::Value) -> Result<(), Error> {
    let columns: Vec<String> = answer["columns"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| c.as_str())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "NULL".to_string(),
        serde_json::Value::String(t) => t.clone(),
        serde_json::Value::Object(o) => match o.get("blob").and_then(|b| b.as_str()) {
            Some(hex) => format!("x'{hex}'"),
            None => v.to_string(),
        },
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = answer["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| {
                    row.as_array()
                        .map(|cells| cells.iter().map(cell).collect())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    print_table(
        &columns,
        &rows,
        &format!(
            "{} read, {} written; through the server",
            answer["rows_read"], answer["rows_written"]
        ),
    )
}

/// Tab-separated: the column names, then one line per row (tabs, newlines and other control
/// characters in values escaped); the counts on stderr.
pub(super) fn print_table(
    columns: &[String],
    rows: &[Vec<String>],
    counts: &str,
) -> Result<(), Error> {
    let line = |cells: &[String]| {
        cells
            .iter()
            .map(|c| printable(c))
            .collect::<Vec<_>>()
            .join("\t")
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", line(columns))?;
    for row in rows {
        writeln!(out, "{}", line(row))?;
    }
    out.flush()?;
    writeln!(std::io::stderr(), "({} rows, {counts})", rows.len())?;
    Ok(())
}

/// A value as a table cell: SQL literals for NULL and blobs.
pub(super) fn show(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) => r.to_string(),
        Value::Text(t) => t.clone(),
        Value::Blob(b) => format!(
            "x'{}'",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ),
    }
}
