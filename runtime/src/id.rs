//! Object ids: 32 bytes, shown as 64 lowercase hex characters.
//!
//! The first 16 bytes identify the object (a keyed hash of the name, or random bytes); the last 16
//! are a MAC over the namespace and those bytes, keyed by the runtime's secret. So an id can only be
//! minted by the runtime that owns the data directory, and `id_from_string` can tell an id of one
//! namespace from a forged one or one of another namespace.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};

/// The address of one object inside its namespace.
#[derive(Clone)]
pub struct ObjectId {
    bytes: [u8; 32],
    name: Option<Arc<str>>,
}

impl ObjectId {
    /// The name this id was derived from, when it was made with `id_from_name` (or the runtime
    /// knows the name from its catalog).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The 64-character hex form, stable across restarts; `id_from_string` parses it back.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.bytes {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        s
    }

    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
        ObjectId { bytes, name: None }
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    pub(crate) fn with_name(mut self, name: Option<Arc<str>>) -> Self {
        if self.name.is_none() {
            self.name = name;
        }
        self
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl PartialEq for ObjectId {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}
impl Eq for ObjectId {}
impl std::hash::Hash for ObjectId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "ObjectId({}, {name:?})", self.to_hex()),
            None => write!(f, "ObjectId({})", self.to_hex()),
        }
    }
}

/// Mints and checks the ids of one namespace.
#[derive(Clone)]
pub(crate) struct IdMinter {
    namespace: Arc<str>,
    name_key: [u8; 32],
    mac_key: [u8; 32],
}

/// Names longer than this are still addressable, but (as in Durable Objects) not reported back by
/// `ObjectId::name`, so they are never stored.
pub const MAX_NAME_LEN: usize = 1024;

impl IdMinter {
    pub(crate) fn new(secret: &[u8; 32], namespace: &str) -> Self {
        let derive = |purpose: &str| {
            let mut h = blake3::Hasher::new_keyed(secret);
            h.update(purpose.as_bytes());
            h.update(&[0]);
            h.update(namespace.as_bytes());
            *h.finalize().as_bytes()
        };
        IdMinter {
            namespace: namespace.into(),
            name_key: derive("denizen id from name"),
            mac_key: derive("denizen id mac"),
        }
    }

    fn seal(&self, head: [u8; 16]) -> [u8; 32] {
        let mac = blake3::keyed_hash(&self.mac_key, &head);
        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(&head);
        bytes[16..].copy_from_slice(&mac.as_bytes()[..16]);
        bytes
    }

    pub(crate) fn id_for_name(&self, name: &str) -> ObjectId {
        let hash = blake3::keyed_hash(&self.name_key, name.as_bytes());
        let mut head = [0u8; 16];
        head.copy_from_slice(&hash.as_bytes()[..16]);
        ObjectId {
            bytes: self.seal(head),
            name: (name.len() <= MAX_NAME_LEN).then(|| name.into()),
        }
    }

    pub(crate) fn unique(&self) -> ObjectId {
        let head: [u8; 16] = rand::random();
        ObjectId {
            bytes: self.seal(head),
            name: None,
        }
    }

    pub(crate) fn parse(&self, s: &str) -> Result<ObjectId> {
        let invalid = |reason: &str| Error::InvalidId {
            namespace: self.namespace.to_string(),
            reason: reason.to_string(),
        };
        if s.len() != 64 {
            return Err(invalid("an id is 64 hex characters"));
        }
        let mut bytes = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or_else(|| invalid("an id is 64 hex characters"))?;
            let lo = hex_val(pair[1]).ok_or_else(|| invalid("an id is 64 hex characters"))?;
            bytes[i] = (hi << 4) | lo;
        }
        let mut head = [0u8; 16];
        head.copy_from_slice(&bytes[..16]);
        let expected = self.seal(head);
        // Constant-time comparison: the MAC is what makes ids unforgeable.
        let diff = expected
            .iter()
            .zip(bytes.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(invalid(
                "this id was not minted for this namespace (forged, corrupted, or from another namespace or data directory)",
            ));
        }
        Ok(ObjectId { bytes, name: None })
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic_and_namespaced() {
        let key = [7u8; 32];
        let a = IdMinter::new(&key, "counter");
        let b = IdMinter::new(&key, "chat");
        assert_eq!(a.id_for_name("alice"), a.id_for_name("alice"));
        assert_ne!(a.id_for_name("alice"), a.id_for_name("bob"));
        assert_ne!(
            a.id_for_name("alice").to_hex(),
            b.id_for_name("alice").to_hex()
        );
        assert_eq!(a.id_for_name("alice").name(), Some("alice"));
        let other_key = IdMinter::new(&[8u8; 32], "counter");
        assert_ne!(a.id_for_name("alice"), other_key.id_for_name("alice"));
    }

    #[test]
    fn from_string_accepts_own_ids_only() {
        let key = [1u8; 32];
        let a = IdMinter::new(&key, "counter");
        let b = IdMinter::new(&key, "chat");
        let id = a.unique();
        assert_eq!(a.parse(&id.to_hex()).unwrap(), id);
        assert!(matches!(
            b.parse(&id.to_hex()),
            Err(Error::InvalidId { .. })
        ));
        let mut forged = id.to_hex();
        forged.replace_range(0..1, if forged.starts_with('0') { "1" } else { "0" });
        assert!(a.parse(&forged).is_err());
        assert!(a.parse("xyz").is_err());
        assert!(a.parse(&"g".repeat(64)).is_err());
        assert_eq!(a.parse(&id.to_hex().to_uppercase()).unwrap(), id);
    }

    #[test]
    fn long_names_are_not_reported() {
        let a = IdMinter::new(&[0u8; 32], "n");
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(a.id_for_name(&long).name(), None);
        assert_eq!(a.id_for_name(&long), a.id_for_name(&long));
    }
}
