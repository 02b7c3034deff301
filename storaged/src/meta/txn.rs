//! A write overlay over the state machine tree.
//!
//! `apply` collects the writes of a whole batch of log entries here and
//! commits them to sled together with `last_applied`, atomically (see
//! `state_machine.rs`).
//! Reads see the batch's own earlier writes. Each command runs between
//! [`Txn::begin`] and either [`Txn::end`] or [`Txn::rollback`], so a command
//! that fails with an errno leaves nothing behind.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::raft::{decode, encode};

/// Errors that abort applying: the store itself failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed to read.
    #[error("state machine store: {0}")]
    Sled(#[from] sled::Error),
    /// A stored record does not decode.
    #[error("state machine record under key {key:?} is corrupt: {source}")]
    Corrupt {
        /// The key whose value does not decode.
        key: Vec<u8>,
        /// The decoding error.
        source: bincode::Error,
    },
}

/// The outcome of one command that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Fail {
    /// A POSIX error: a deterministic result, sent back to the client.
    #[error("errno {0}")]
    Posix(i32),
    /// The store failed: applying stops.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Result of a namespace operation.
pub type OpResult<T> = Result<T, Fail>;

/// A set of writes to the tree: each key's new value, `None` to delete it.
pub type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A key and its overlay state before the current command touched it
/// (`None`: the overlay did not hold the key).
type Undo = (Vec<u8>, Option<Option<Vec<u8>>>);

/// Pending writes over a sled tree, with per-command undo.
#[derive(Debug)]
pub struct Txn<'a> {
    tree: &'a sled::Tree,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Previous overlay state of each key the current command touched.
    undo: Vec<Undo>,
}

impl<'a> Txn<'a> {
    /// Starts an empty overlay over `tree`.
    pub fn new(tree: &'a sled::Tree) -> Self {
        Self {
            tree,
            writes: BTreeMap::new(),
            undo: Vec::new(),
        }
    }

    /// Starts a command: later writes can be rolled back until [`Txn::end`].
    pub fn begin(&mut self) {
        self.undo.clear();
    }

    /// Keeps the current command's writes.
    pub fn end(&mut self) {
        self.undo.clear();
    }

    /// Drops the current command's writes.
    pub fn rollback(&mut self) {
        while let Some((k, prev)) = self.undo.pop() {
            match prev {
                Some(v) => self.writes.insert(k, v),
                None => self.writes.remove(&k),
            };
        }
    }

    /// Raw read through the overlay.
    pub fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => Ok(self.tree.get(key)?.map(|v| v.to_vec())),
        }
    }

    /// Typed read through the overlay.
    pub fn get<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.get_raw(key)? {
            None => Ok(None),
            Some(v) => decode(&v).map(Some).map_err(|source| StoreError::Corrupt {
                key: key.to_vec(),
                source,
            }),
        }
    }

    fn remember(&mut self, key: &[u8]) {
        let prev = self.writes.get(key).cloned();
        self.undo.push((key.to_vec(), prev));
    }

    /// Raw write.
    pub fn put_raw(&mut self, key: &[u8], value: Vec<u8>) {
        self.remember(key);
        self.writes.insert(key.to_vec(), Some(value));
    }

    /// Typed write.
    pub fn put<T: Serialize>(&mut self, key: &[u8], value: &T) {
        self.put_raw(key, encode(value));
    }

    /// Deletes a key.
    pub fn remove(&mut self, key: &[u8]) {
        self.remember(key);
        self.writes.insert(key.to_vec(), None);
    }

    /// Every key that starts with `prefix`, through the overlay, in order.
    pub fn keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys = std::collections::BTreeSet::new();
        for item in self.tree.scan_prefix(prefix) {
            let (k, _) = item?;
            keys.insert(k.to_vec());
        }
        for (k, v) in self.writes.range(prefix.to_vec()..) {
            if !k.starts_with(prefix) {
                break;
            }
            if v.is_some() {
                keys.insert(k.clone());
            } else {
                keys.remove(k);
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// Reads a big-endian u64 counter (0 when absent).
    pub fn get_u64(&self, key: &[u8]) -> Result<u64, StoreError> {
        Ok(self
            .get_raw(key)?
            .and_then(|v| v.try_into().ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Writes a big-endian u64 counter; 0 removes the key.
    pub fn put_u64(&mut self, key: &[u8], value: u64) {
        if value == 0 {
            self.remove(key);
        } else {
            self.put_raw(key, value.to_be_bytes().to_vec());
        }
    }

    /// The overlay's writes: each key's new value, `None` to delete it.
    pub fn into_writes(self) -> Writes {
        self.writes
    }
}
