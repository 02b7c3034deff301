//! Exactly-once replies: the state machine remembers, per client, the reply
//! of every request the client has not yet acknowledged, so a request
//! retried after a lost reply or a leader change is answered, not re-applied.
//!
//! A session exists from `RegisterClient` until the leader expires it
//! (`ExpireSessions`, see `crate::meta::expiry`); a request in a session
//! that does not exist is refused as expired, never applied.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::schema::session_key;
use super::txn::{StoreError, Txn};

/// Most replies kept per client; older ones are forgotten first.
pub const MAX_REPLIES_PER_CLIENT: usize = 4096;

/// The remembered replies of one client.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Session {
    /// Every seq below this has been forgotten.
    pub floor: u64,
    /// Prost-encoded replies by seq.
    pub replies: BTreeMap<u64, Vec<u8>>,
}

/// What the session table knows of a request.
#[derive(Debug)]
pub enum Seen {
    /// Never applied: apply it.
    New,
    /// Applied before: here is its reply.
    Replied(Vec<u8>),
    /// Applied so long ago that its reply is gone.
    Forgotten,
    /// The session does not exist (expired): nothing may be applied in it.
    Expired,
}

/// Looks a request up.
pub fn seen(txn: &Txn<'_>, client: u64, seq: u64) -> Result<Seen, StoreError> {
    let Some(s) = txn.get::<Session>(&session_key(client))? else {
        return Ok(Seen::Expired);
    };
    if let Some(r) = s.replies.get(&seq) {
        return Ok(Seen::Replied(r.clone()));
    }
    Ok(if seq < s.floor {
        Seen::Forgotten
    } else {
        Seen::New
    })
}

/// Records a reply and forgets what the client has acknowledged.
pub fn record(
    txn: &mut Txn<'_>,
    client: u64,
    seq: u64,
    acked_below: u64,
    reply: Vec<u8>,
) -> Result<(), StoreError> {
    let key = session_key(client);
    let mut s: Session = txn.get(&key)?.unwrap_or_default();
    if acked_below > s.floor {
        s.floor = acked_below;
        s.replies = s.replies.split_off(&acked_below);
    }
    s.replies.insert(seq, reply);
    while s.replies.len() > MAX_REPLIES_PER_CLIENT {
        if let Some((oldest, _)) = s.replies.pop_first() {
            s.floor = s.floor.max(oldest + 1);
        }
    }
    txn.put(&key, &s);
    Ok(())
}

/// Starts the session of a newly registered client.
pub fn create(txn: &mut Txn<'_>, client: u64) {
    txn.put(&session_key(client), &Session::default());
}

/// Forgets the given sessions; returns how many existed.
pub fn expire(txn: &mut Txn<'_>, clients: &[u64]) -> Result<u64, StoreError> {
    let mut n = 0;
    for &c in clients {
        let key = session_key(c);
        if txn.get_raw(&key)?.is_some() {
            txn.remove(&key);
            n += 1;
        }
    }
    Ok(n)
}
