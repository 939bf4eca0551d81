use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde::forward_to_deserialize_any;

use crate::error::{Error, Result};
use crate::value::Value;

/// The result of `exec`: column names, rows and the billing-style counters, fully read.
#[derive(Clone, Debug, Default)]
pub struct Cursor {
    pub(crate) columns: Vec<String>,
    pub(crate) rows: Vec<Vec<Value>>,
    pub(crate) rows_read: u64,
    pub(crate) rows_written: u64,
}

impl Cursor {
    /// The column names of the result.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The rows as raw values, in column order.
    pub fn rows(&self) -> &[Vec<Value>] {
        &self.rows
    }

    /// The rows, taken out of the cursor.
    pub fn into_rows(self) -> Vec<Vec<Value>> {
        self.rows
    }

    /// Rows returned plus rows stepped over by full table scans.
    pub fn rows_read(&self) -> u64 {
        self.rows_read
    }

    /// Rows inserted, updated or deleted.
    pub fn rows_written(&self) -> u64 {
        self.rows_written
    }

    /// Exactly one row, decoded. A struct or map takes columns by name, a tuple or `Vec` takes
    /// them in order, and a plain value (`i64`, `String`, `Option<_>`, ...) takes the only column.
    pub fn one<T: DeserializeOwned>(self) -> Result<T> {
        if self.rows.len() != 1 {
            return Err(Error::NotOneRow {
                rows: self.rows.len(),
            });
        }
        decode_row(&self.columns, &self.rows[0])
    }

    /// The first row, if any, decoded like [`Cursor::one`].
    pub fn first<T: DeserializeOwned>(self) -> Result<Option<T>> {
        self.rows
            .first()
            .map(|row| decode_row(&self.columns, row))
            .transpose()
    }

    /// Every row, decoded like [`Cursor::one`].
    pub fn all<T: DeserializeOwned>(self) -> Result<Vec<T>> {
        self.rows
            .iter()
            .map(|row| decode_row(&self.columns, row))
            .collect()
    }
}

fn decode_row<T: DeserializeOwned>(columns: &[String], row: &[Value]) -> Result<T> {
    T::deserialize(RowDeserializer { columns, row })
}

struct RowDeserializer<'a> {
    columns: &'a [String],
    row: &'a [Value],
}

impl<'a> RowDeserializer<'a> {
    fn single(&self) -> Result<ValueDeserializer<'a>> {
        match self.row {
            [value] => Ok(ValueDeserializer(value)),
            _ => Err(Error::Decode {
                message: format!(
                    "a plain value needs exactly one column, the row has {}; decode into a struct or tuple instead",
                    self.row.len()
                ),
            }),
        }
    }
}

macro_rules! single_column {
    ($($method:ident),*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            self.single()?.$method(visitor)
        })*
    };
}

impl<'de, 'a> de::Deserializer<'de> for RowDeserializer<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_map(RowMap {
            columns: self.columns.iter(),
            values: self.row.iter(),
            pending: None,
        })
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_any(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_seq(RowSeq(self.row.iter()))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if self.row.len() == 1 {
            self.single()?.deserialize_option(visitor)
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        self.single()?.deserialize_unit(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.single()?.deserialize_enum(name, variants, visitor)
    }

    single_column!(
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_unit,
        deserialize_identifier,
        deserialize_ignored_any
    );
}

struct RowMap<'a> {
    columns: std::slice::Iter<'a, String>,
    values: std::slice::Iter<'a, Value>,
    pending: Option<&'a Value>,
}

impl<'de, 'a> MapAccess<'de> for RowMap<'a> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        match (self.columns.next(), self.values.next()) {
            (Some(column), Some(value)) => {
                self.pending = Some(value);
                seed.deserialize(column.as_str().into_deserializer())
                    .map(Some)
            }
            _ => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        match self.pending.take() {
            Some(value) => seed.deserialize(ValueDeserializer(value)),
            None => Err(Error::Decode {
                message: "a column value was requested before its name".into(),
            }),
        }
    }
}

struct RowSeq<'a>(std::slice::Iter<'a, Value>);

impl<'de, 'a> SeqAccess<'de> for RowSeq<'a> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        self.0
            .next()
            .map(|v| seed.deserialize(ValueDeserializer(v)))
            .transpose()
    }
}

/// Decodes one SQLite value.
struct ValueDeserializer<'a>(&'a Value);

impl<'de, 'a> de::Deserializer<'de> for ValueDeserializer<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Integer(i) => visitor.visit_i64(*i),
            Value::Real(r) => visitor.visit_f64(*r),
            Value::Text(t) => visitor.visit_str(t),
            Value::Blob(b) => visitor.visit_bytes(b),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.0 {
            Value::Integer(i) => visitor.visit_bool(*i != 0),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.0 {
            Value::Text(t) => visitor.visit_enum(t.as_str().into_deserializer()),
            other => Err(Error::Decode {
                message: format!("an enum is stored as text, found {other:?}"),
            }),
        }
    }

    forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn cursor(columns: &[&str], rows: Vec<Vec<Value>>) -> Cursor {
        Cursor {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows,
            rows_read: 0,
            rows_written: 0,
        }
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Row {
        name: String,
        n: i64,
        score: Option<f64>,
        ok: bool,
    }

    #[test]
    fn decodes_structs_tuples_scalars_and_json() {
        let c = cursor(
            &["name", "n", "score", "ok"],
            vec![vec![
                Value::Text("a".into()),
                Value::Integer(3),
                Value::Null,
                Value::Integer(1),
            ]],
        );
        assert_eq!(
            c.clone().one::<Row>().unwrap(),
            Row {
                name: "a".into(),
                n: 3,
                score: None,
                ok: true
            }
        );
        let t: (String, i64, Option<f64>, bool) = c.clone().one().unwrap();
        assert_eq!(t, ("a".into(), 3, None, true));
        let j: serde_json::Value = c.clone().one().unwrap();
        assert_eq!(
            j,
            serde_json::json!({"name": "a", "n": 3, "score": null, "ok": 1})
        );
        assert!(c.one::<i64>().is_err());

        let single = cursor(&["n"], vec![vec![Value::Integer(7)], vec![Value::Null]]);
        let all: Vec<Option<i64>> = single.clone().all().unwrap();
        assert_eq!(all, vec![Some(7), None]);
        assert!(matches!(
            single.clone().one::<i64>(),
            Err(Error::NotOneRow { rows: 2 })
        ));
        assert_eq!(single.first::<i64>().unwrap(), Some(7));
        let blob = cursor(&["b"], vec![vec![Value::Blob(vec![1, 2])]]);
        assert_eq!(blob.one::<serde_bytes_like::Bytes>().unwrap().0, vec![1, 2]);
    }

    mod serde_bytes_like {
        use serde::de::{Deserialize, Deserializer, Visitor};
        pub(super) struct Bytes(pub(super) Vec<u8>);
        impl<'de> Deserialize<'de> for Bytes {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = Bytes;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                        Ok(Bytes(v.to_vec()))
                    }
                }
                d.deserialize_bytes(V)
            }
        }
    }
}
