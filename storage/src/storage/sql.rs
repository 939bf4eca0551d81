//! SQL: `exec` of one or more statements under the guard, with optional bounds on the result.

use std::time::{Duration, Instant};

use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::{Connection, StatementStatus};

use super::Storage;
use super::guard::guarded_error;
use crate::cursor::Cursor;
use crate::error::{Error, Result};
use crate::value::{Params, Value, from_ref};

/// Bounds on one query: how long it may run and how much it may return. Operators' queries (the
/// admin SQL route) run under them so that one query cannot hold an object, or the server's
/// memory, for long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryLimits {
    /// The query is interrupted after this long ([`Error::TimeBudget`]).
    pub time_budget: Duration,
    /// At most this many rows in the result ([`Error::TooManyRows`]).
    pub max_rows: usize,
    /// At most this many bytes of values in the result ([`Error::ResultTooLarge`]).
    pub max_bytes: usize,
}

impl QueryLimits {
    /// What an operator's query gets unless configured otherwise: 5 s, 10,000 rows, 16 MiB.
    pub const OPERATOR: QueryLimits = QueryLimits {
        time_budget: Duration::from_secs(5),
        max_rows: 10_000,
        max_bytes: 16 << 20,
    };
}

/// How far the rows of a result may go.
#[derive(Clone, Copy)]
struct Caps {
    rows: usize,
    bytes: usize,
}

const NO_CAPS: Caps = Caps {
    rows: usize::MAX,
    bytes: usize::MAX,
};

pub(super) fn sql_error(e: rusqlite::Error) -> Error {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(message)) => Error::Sql { message },
        rusqlite::Error::SqlInputError {
            msg, sql, offset, ..
        } => Error::Sql {
            message: format!("{msg} (at byte {offset} of `{sql}`)"),
        },
        rusqlite::Error::InvalidParameterCount(given, expected) => Error::Sql {
            message: format!("{given} parameters given, the statement takes {expected}"),
        },
        other => Error::Sql {
            message: other.to_string(),
        },
    }
}

fn is_interrupt(e: &Error) -> bool {
    match e {
        Error::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
            f.code == rusqlite::ErrorCode::OperationInterrupted
        }
        Error::Sql { message } => message == "interrupted",
        _ => false,
    }
}

impl Storage {
    /// Runs one or more `;`-separated statements. Parameters bind to the last statement, and the
    /// cursor holds the last statement's rows.
    pub fn exec(&mut self, sql: &str, params: impl Params) -> Result<Cursor> {
        self.exec_capped(sql, params.into_values(), NO_CAPS)
    }

    /// [`Storage::exec`] within `limits`: the query is interrupted past its time budget (or the
    /// event's deadline, whichever comes first), and a result that would pass the row or byte
    /// cap fails instead of being built whole.
    pub fn exec_limited(
        &mut self,
        sql: &str,
        params: impl Params,
        limits: &QueryLimits,
    ) -> Result<Cursor> {
        let outer = self.budget;
        let at = Instant::now() + limits.time_budget;
        if outer.is_none_or(|(deadline, _)| at < deadline) {
            self.set_budget(Some((at, limits.time_budget)));
        }
        let caps = Caps {
            rows: limits.max_rows,
            bytes: limits.max_bytes,
        };
        let result = self.exec_capped(sql, params.into_values(), caps);
        self.set_budget(outer);
        result
    }

    fn exec_capped(&mut self, sql: &str, params: Vec<Value>, caps: Caps) -> Result<Cursor> {
        self.ensure_txn()?;
        self.set_guard(true);
        let result = self.exec_guarded(sql, &params, caps);
        let denial = self.set_guard(false);
        result.map_err(|e| match self.budget {
            Some((_, budget)) if is_interrupt(&e) && self.deadline.passed() => {
                Error::TimeBudget { budget }
            }
            _ => guarded_error(e, denial),
        })
    }

    fn exec_guarded(&mut self, sql: &str, params: &[Value], caps: Caps) -> Result<Cursor> {
        let mut cursor = Cursor::default();
        // The cached single-statement path is the fast one; anything it cannot prepare (several
        // statements, where a later one may depend on an earlier one) goes statement by statement,
        // and that path's error is the one reported.
        if self.is_deferred()
            && self
                .conn
                .prepare_cached(sql)
                .is_ok_and(|stmt| !stmt.readonly())
        {
            self.materialize()?;
        }
        if let Ok(mut stmt) = self.conn.prepare_cached(sql) {
            let writes = run_statement(&self.conn, &mut stmt, params, &mut cursor, caps)?;
            self.writes |= writes;
            return Ok(cursor);
        }
        // A database not created yet reads the batch until its first write, then creates the
        // file and runs the batch again from the top there (what ran before only read).
        if self.is_deferred() {
            match self.exec_batch(sql, params, caps, true)? {
                Some(cursor) => return Ok(cursor),
                None => self.materialize()?,
            }
        }
        self.exec_batch(sql, params, caps, false)
            .map(|c| c.unwrap_or_default())
    }

    /// Runs a batch statement by statement. With `stop_at_write`, stops before the first statement
    /// that may write and answers `None`.
    fn exec_batch(
        &mut self,
        sql: &str,
        params: &[Value],
        caps: Caps,
        stop_at_write: bool,
    ) -> Result<Option<Cursor>> {
        let mut cursor = Cursor::default();
        // Each statement is prepared only after the previous one ran (it may create a table the
        // next one uses), so the statement taking the parameters is the one that declares them.
        let mut batch = rusqlite::Batch::new(&self.conn, sql);
        let mut written = 0;
        let mut any_writes = false;
        let mut bound = false;
        while let Some(mut stmt) = batch.next().map_err(sql_error)? {
            if stop_at_write && !stmt.readonly() {
                return Ok(None);
            }
            let takes_params = stmt.parameter_count() > 0;
            if takes_params && bound {
                return Err(Error::Sql {
                    message: "only the last statement of a batch may take parameters".into(),
                });
            }
            let mut c = Cursor::default();
            let p = if takes_params { params } else { &[] };
            any_writes |= run_statement(&self.conn, &mut stmt, p, &mut c, caps)?;
            bound |= takes_params;
            written += c.rows_written;
            cursor = c;
        }
        if !params.is_empty() && !bound {
            return Err(Error::Sql {
                message: format!(
                    "{} parameters given, but no statement takes any",
                    params.len()
                ),
            });
        }
        cursor.rows_written = written;
        self.writes |= any_writes;
        Ok(Some(cursor))
    }
}

/// The bytes a value takes in a result, for the byte cap.
fn value_size(v: &Value) -> usize {
    match v {
        Value::Null | Value::Integer(_) | Value::Real(_) => 8,
        Value::Text(t) => t.len(),
        Value::Blob(b) => b.len(),
    }
}

/// Steps a statement to the end, collecting its rows within `caps`. Returns whether it may have
/// written.
fn run_statement(
    conn: &Connection,
    stmt: &mut rusqlite::Statement<'_>,
    params: &[Value],
    cursor: &mut Cursor,
    caps: Caps,
) -> Result<bool> {
    let expected = stmt.parameter_count();
    if params.len() != expected {
        return Err(Error::Sql {
            message: format!(
                "{} parameters given, the statement takes {expected}",
                params.len()
            ),
        });
    }
    for (i, p) in params.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, p).map_err(sql_error)?;
    }
    let readonly = stmt.readonly();
    stmt.reset_status(StatementStatus::FullscanStep);
    cursor.columns = stmt.column_names().iter().map(|c| c.to_string()).collect();
    let width = stmt.column_count();
    let changes_before = conn.total_changes();
    let mut returned = 0u64;
    let mut bytes = 0usize;
    {
        let mut rows = stmt.raw_query();
        while let Some(row) = rows.next().map_err(sql_error)? {
            returned += 1;
            if cursor.rows.len() >= caps.rows {
                return Err(Error::TooManyRows { limit: caps.rows });
            }
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                let value = from_ref(row.get_ref(i).map_err(sql_error)?);
                bytes = bytes.saturating_add(value_size(&value));
                values.push(value);
            }
            if bytes > caps.bytes {
                return Err(Error::ResultTooLarge { limit: caps.bytes });
            }
            cursor.rows.push(values);
        }
    }
    let scanned = u64::try_from(stmt.get_status(StatementStatus::FullscanStep)).unwrap_or(0);
    cursor.rows_read = returned + scanned;
    cursor.rows_written = if readonly {
        0
    } else {
        conn.total_changes().saturating_sub(changes_before)
    };
    Ok(!readonly)
}
