//! What user SQL may do: the authorizer that refuses transaction statements, reserved tables and
//! most pragmas, and the time budget that interrupts a statement running past its deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use rusqlite::Connection;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

use crate::error::{Error, Result};

/// Why the authorizer refused a user statement (it can only answer deny, so the reason is kept
/// here to build a typed error).
#[derive(Clone, Debug)]
pub(super) enum Denial {
    Transaction(String),
    Reserved(String),
    Other(String),
}

pub(super) struct Guard {
    pub(super) enabled: bool,
    pub(super) denial: Option<Denial>,
}

/// Pragmas user SQL may run: they only read the schema.
const ALLOWED_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
];

/// The prefix of Denizen's own tables.
const RESERVED_PREFIX: &str = "_denizen";

/// Whether `name` starts with `_denizen`, in any case. Compares bytes, so names with multibyte
/// characters anywhere are fine.
pub(super) fn is_reserved(name: &str) -> bool {
    name.as_bytes()
        .get(..RESERVED_PREFIX.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(RESERVED_PREFIX.as_bytes()))
}

fn authorize(guard: &Mutex<Guard>, ctx: AuthContext<'_>) -> Authorization {
    let mut g = guard.lock().unwrap_or_else(|e| e.into_inner());
    if !g.enabled {
        return Authorization::Allow;
    }
    let denial = match ctx.action {
        AuthAction::Transaction { operation } => {
            Some(Denial::Transaction(format!("{operation:?}").to_uppercase()))
        }
        AuthAction::Savepoint { operation, .. } => Some(Denial::Transaction(
            match format!("{operation:?}").as_str() {
                "Begin" => "SAVEPOINT".to_string(),
                other => other.to_uppercase(),
            },
        )),
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => Some(Denial::Other(
            "ATTACH and DETACH are not allowed: an object has one database".into(),
        )),
        AuthAction::Pragma { pragma_name, .. } => {
            let name = pragma_name.to_ascii_lowercase();
            (!ALLOWED_PRAGMAS.contains(&name.as_str())).then(|| {
                Denial::Other(format!(
                    "PRAGMA {name} is not allowed; allowed: {}",
                    ALLOWED_PRAGMAS.join(", ")
                ))
            })
        }
        AuthAction::Read { table_name, .. }
        | AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name }
        | AuthAction::CreateTable { table_name }
        | AuthAction::CreateTempTable { table_name }
        | AuthAction::DropTable { table_name }
        | AuthAction::DropTempTable { table_name }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::CreateIndex { table_name, .. }
        | AuthAction::CreateTempIndex { table_name, .. }
        | AuthAction::DropIndex { table_name, .. }
        | AuthAction::DropTempIndex { table_name, .. }
        | AuthAction::CreateTrigger { table_name, .. }
        | AuthAction::CreateTempTrigger { table_name, .. }
        | AuthAction::DropTrigger { table_name, .. }
        | AuthAction::DropTempTrigger { table_name, .. }
        | AuthAction::Analyze { table_name }
        | AuthAction::CreateVtable { table_name, .. }
        | AuthAction::DropVtable { table_name, .. }
            if is_reserved(table_name) =>
        {
            Some(Denial::Reserved(table_name.to_string()))
        }
        AuthAction::CreateView { view_name, .. } | AuthAction::DropView { view_name }
            if is_reserved(view_name) =>
        {
            Some(Denial::Reserved(view_name.to_string()))
        }
        _ => None,
    };
    match denial {
        Some(d) => {
            g.denial.get_or_insert(d);
            Authorization::Deny
        }
        None => Authorization::Allow,
    }
}

/// Installs the authorizer that refuses, while enabled, what user SQL may not do.
pub(super) fn install_guard(conn: &Connection, enabled: bool) -> Result<Arc<Mutex<Guard>>> {
    let guard = Arc::new(Mutex::new(Guard {
        enabled,
        denial: None,
    }));
    let hook = guard.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| authorize(&hook, ctx)))?;
    Ok(guard)
}

/// The error of a guarded statement: what the guard refused, if that was the cause.
pub(super) fn guarded_error(error: Error, denial: Option<Denial>) -> Error {
    match denial {
        Some(Denial::Transaction(statement)) => Error::TransactionStatement { statement },
        Some(Denial::Reserved(name)) => Error::ReservedTable { name },
        Some(Denial::Other(message)) => Error::Sql { message },
        None => error,
    }
}

/// The error of a schema that failed, said in terms of the schema.
pub(super) fn schema_error(error: Error) -> Error {
    let message = match error {
        Error::TransactionStatement { statement } => {
            format!("`{statement}` is not allowed: the schema runs in a transaction of its own")
        }
        Error::ReservedTable { name } => {
            format!("table `{name}` is reserved for Denizen's own use")
        }
        Error::Sql { message } => message,
        other => other.to_string(),
    };
    Error::Schema { message }
}

/// SQLite virtual-machine steps between two looks at the clock while a statement runs: about a
/// millisecond of work or less, so a deadline is kept to within about that.
const STEPS_PER_CHECK: i32 = 10_000;

/// A deadline for the statements of one connection: past it, the running statement is
/// interrupted (SQLite's progress handler) and fails with [`Error::TimeBudget`].
#[derive(Clone, Default)]
pub(super) struct Deadline {
    /// Nanoseconds after [`origin`]; 0 for none.
    at: Arc<AtomicU64>,
}

/// The instant deadlines count from (one per process).
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn nanos_since_origin(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(origin()).as_nanos()).unwrap_or(u64::MAX)
}

impl Deadline {
    /// Interrupts `conn`'s statements that run past this deadline.
    pub(super) fn install(&self, conn: &Connection) -> Result<()> {
        let deadline = self.clone();
        conn.progress_handler(STEPS_PER_CHECK, Some(move || deadline.passed()))?;
        Ok(())
    }

    pub(super) fn set(&self, at: Option<Instant>) {
        let nanos = at.map_or(0, |at| nanos_since_origin(at).max(1));
        self.at.store(nanos, Ordering::Relaxed);
    }

    pub(super) fn passed(&self) -> bool {
        let at = self.at.load(Ordering::Relaxed);
        at != 0 && nanos_since_origin(Instant::now()) >= at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_are_recognised_in_any_case_and_multibyte_names_are_fine() {
        assert!(is_reserved("_denizen_kv"));
        assert!(is_reserved("_DENIZEN"));
        assert!(!is_reserved("_deniz"));
        assert!(!is_reserved("café_au_lait"));
        assert!(!is_reserved("日本語のテーブル"));
        assert!(!is_reserved("_denizé"));
        assert!(!is_reserved(""));
    }
}
