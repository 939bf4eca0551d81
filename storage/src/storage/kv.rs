//! The KV API: MessagePack values under string keys, in a table of the object's own database.

use rusqlite::OptionalExtension;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Storage;
use crate::error::{Error, Result};
use crate::{MAX_BATCH_KEYS, MAX_KEY_SIZE, MAX_VALUE_SIZE};

/// Which keys `Storage::list` returns, in byte order.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Inclusive.
    pub start: Option<String>,
    /// Exclusive.
    pub start_after: Option<String>,
    /// Exclusive.
    pub end: Option<String>,
    /// At most this many entries.
    pub limit: Option<usize>,
    /// Descending order.
    pub reverse: bool,
}

fn check_key(key: &str) -> Result<()> {
    if key.len() > MAX_KEY_SIZE {
        return Err(Error::KeyTooLarge {
            size: key.len(),
            max: MAX_KEY_SIZE,
        });
    }
    Ok(())
}

fn check_batch(n: usize) -> Result<()> {
    if n > MAX_BATCH_KEYS {
        return Err(Error::BatchTooLarge {
            size: n,
            max: MAX_BATCH_KEYS,
        });
    }
    Ok(())
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let bytes = rmp_serde::to_vec_named(value).map_err(|e| Error::Encode {
        message: e.to_string(),
    })?;
    if bytes.len() > MAX_VALUE_SIZE {
        return Err(Error::ValueTooLarge {
            size: bytes.len(),
            max: MAX_VALUE_SIZE,
        });
    }
    Ok(bytes)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::Decode {
        message: e.to_string(),
    })
}

/// The smallest byte string greater than every string starting with `prefix` (None: no bound).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Storage {
    /// The value of `key`, if it exists.
    pub fn get<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>> {
        check_key(key)?;
        self.ensure_txn()?;
        let bytes: Option<Vec<u8>> = self
            .conn
            .prepare_cached(&self.sql.kv_get)?
            .query_row([key.as_bytes()], |r| r.get(0))
            .optional()?;
        bytes.map(|b| decode(&b)).transpose()
    }

    /// The values of the keys that exist, in key order.
    pub fn get_many<T: DeserializeOwned>(&mut self, keys: &[&str]) -> Result<Vec<(String, T)>> {
        check_batch(keys.len())?;
        for k in keys {
            check_key(k)?;
        }
        self.ensure_txn()?;
        let mut sorted: Vec<&str> = keys.to_vec();
        sorted.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        sorted.dedup();
        let mut stmt = self.conn.prepare_cached(&self.sql.kv_get)?;
        let mut out = Vec::new();
        for key in sorted {
            let bytes: Option<Vec<u8>> =
                stmt.query_row([key.as_bytes()], |r| r.get(0)).optional()?;
            if let Some(b) = bytes {
                out.push((key.to_string(), decode(&b)?));
            }
        }
        Ok(out)
    }

    /// Sets `key` to `value` (MessagePack, at most [`MAX_VALUE_SIZE`] bytes).
    pub fn put<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        check_key(key)?;
        let bytes = encode(value)?;
        self.ensure_write_txn()?;
        self.conn
            .prepare_cached(&self.sql.kv_put)?
            .execute(rusqlite::params![key.as_bytes(), bytes])?;
        self.writes = true;
        Ok(())
    }

    /// Sets many keys at once (at most [`MAX_BATCH_KEYS`]).
    pub fn put_many<T: Serialize>(&mut self, entries: &[(&str, T)]) -> Result<()> {
        check_batch(entries.len())?;
        let mut encoded = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            check_key(k)?;
            encoded.push((k.as_bytes(), encode(v)?));
        }
        self.ensure_write_txn()?;
        let mut stmt = self.conn.prepare_cached(&self.sql.kv_put)?;
        for (k, v) in encoded {
            stmt.execute(rusqlite::params![k, v])?;
        }
        self.writes = true;
        Ok(())
    }

    /// Whether the key existed.
    pub fn delete(&mut self, key: &str) -> Result<bool> {
        check_key(key)?;
        self.ensure_txn()?;
        if self.is_deferred() {
            // A database not created yet holds no key.
            return Ok(false);
        }
        let n = self
            .conn
            .prepare_cached(&self.sql.kv_delete)?
            .execute([key.as_bytes()])?;
        self.writes |= n > 0;
        Ok(n > 0)
    }

    /// How many of the keys existed.
    pub fn delete_many(&mut self, keys: &[&str]) -> Result<usize> {
        check_batch(keys.len())?;
        for k in keys {
            check_key(k)?;
        }
        self.ensure_txn()?;
        if self.is_deferred() {
            return Ok(0);
        }
        let mut stmt = self.conn.prepare_cached(&self.sql.kv_delete)?;
        let mut n = 0;
        for k in keys {
            n += stmt.execute([k.as_bytes()])?;
        }
        self.writes |= n > 0;
        Ok(n)
    }

    /// Entries in byte order of their keys (reversed with `reverse`).
    pub fn list<T: DeserializeOwned>(&mut self, options: &ListOptions) -> Result<Vec<(String, T)>> {
        self.ensure_txn()?;
        let mut conditions = Vec::new();
        let mut params: Vec<Vec<u8>> = Vec::new();
        if let Some(prefix) = &options.prefix {
            params.push(prefix.as_bytes().to_vec());
            conditions.push(format!("key >= ?{}", params.len()));
            if let Some(end) = prefix_end(prefix.as_bytes()) {
                params.push(end);
                conditions.push(format!("key < ?{}", params.len()));
            }
        }
        if let Some(start) = &options.start {
            params.push(start.as_bytes().to_vec());
            conditions.push(format!("key >= ?{}", params.len()));
        }
        if let Some(after) = &options.start_after {
            params.push(after.as_bytes().to_vec());
            conditions.push(format!("key > ?{}", params.len()));
        }
        if let Some(end) = &options.end {
            params.push(end.as_bytes().to_vec());
            conditions.push(format!("key < ?{}", params.len()));
        }
        let mut sql = String::from("SELECT key, value FROM _denizen_kv");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(if options.reverse {
            " ORDER BY key DESC"
        } else {
            " ORDER BY key ASC"
        });
        if let Some(limit) = options.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(params.iter()), |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (k, v) = row?;
            let key = String::from_utf8(k).map_err(|e| Error::Decode {
                message: format!("a stored key is not UTF-8: {e}"),
            })?;
            out.push((key, decode(&v)?));
        }
        Ok(out)
    }

    /// Deletes every KV entry and every table, view and trigger the object created, like
    /// Durable Objects' `deleteAll`, then puts the object type's `SCHEMA` back in place, so the
    /// object goes on as a new one would. The runtime's own metadata (alarm, name) is kept.
    pub fn delete_all(&mut self) -> Result<()> {
        self.ensure_txn()?;
        if self.is_deferred() {
            // Nothing was ever written: it is as new already.
            return Ok(());
        }
        self.conn.execute("DELETE FROM _denizen_kv", [])?;
        let objects: Vec<(String, String)> = {
            let mut stmt = self.conn.prepare(
                "SELECT type, name FROM sqlite_schema
                 WHERE type IN ('table', 'view', 'trigger')
                   AND name NOT LIKE '\\_denizen%' ESCAPE '\\'
                   AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for kind in ["trigger", "view", "table"] {
            for (_, name) in objects.iter().filter(|(t, _)| t == kind) {
                let quoted = name.replace('"', "\"\"");
                self.conn.execute_batch(&format!(
                    "DROP {} IF EXISTS \"{quoted}\"",
                    kind.to_uppercase()
                ))?;
            }
        }
        self.writes = true;
        if !self.schema.is_empty() {
            let schema = self.schema;
            self.exec(schema, ()).map_err(super::guard::schema_error)?;
        }
        Ok(())
    }
}
