//! The format version of the metadata on disk. A data directory records
//! the version that wrote it; a node refuses one it does not read, rather
//! than misread it.
//!
//! | version | content model |
//! | --- | --- |
//! | 1 | a list of whole chunks per file (chunk i at i * 4 MiB); recorded by its absence |
//! | 2 | extents: (offset, length) -> (chunk, offset inside it) |
//! | 3 | as 2, with the Raft log in segment files (`DATA/raftlog`) instead of sled; a version 2 directory is moved at start ([`crate::raft::log_store`]) |

/// The version this build writes and reads.
pub const FORMAT_VERSION: u64 = 3;
/// The oldest version this build reads, and moves to [`FORMAT_VERSION`].
pub const OLDEST_READ: u64 = 2;

/// Key of the version in the node tree.
const KEY_FORMAT: &[u8] = b"format_version";

/// A data directory this build cannot use.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The directory was written by another format version.
    #[error(
        "the metadata in {dir} is format version {found}; this storaged reads versions {OLDEST_READ} to {FORMAT_VERSION} (no migration from other versions exists: start it on an empty data directory)"
    )]
    Other {
        /// The data directory.
        dir: String,
        /// The version found there.
        found: u64,
    },
    /// sled failed.
    #[error("cannot read the metadata format version in {dir}: {source}")]
    Sled {
        /// The data directory.
        dir: String,
        /// What sled said.
        source: sled::Error,
    },
}

/// Checks the version recorded in `node_tree`, recording ours in a new
/// data directory or one of an older version this build reads (the
/// caller then moves the Raft log of a version 2 directory, a move that
/// is repeated at every start until done whatever the record says, and
/// flushes). `existing`: the
/// database held data before this start (sled recovered it), so a missing
/// record means version 1.
pub fn check(node_tree: &sled::Tree, existing: bool, dir: &str) -> Result<(), FormatError> {
    let sled_err = |source| FormatError::Sled {
        dir: dir.to_string(),
        source,
    };
    let found = node_tree.get(KEY_FORMAT).map_err(sled_err)?;
    let found = match found {
        Some(v) => <[u8; 8]>::try_from(v.as_ref()).map_or(0, u64::from_be_bytes),
        None if existing => 1,
        None => {
            // Made durable by the caller's flush, with the rest of the start.
            node_tree
                .insert(KEY_FORMAT, FORMAT_VERSION.to_be_bytes().as_slice())
                .map_err(sled_err)?;
            FORMAT_VERSION
        }
    };
    if !(OLDEST_READ..=FORMAT_VERSION).contains(&found) {
        return Err(FormatError::Other {
            dir: dir.to_string(),
            found,
        });
    }
    if found != FORMAT_VERSION {
        tracing::info!(from = found, to = FORMAT_VERSION, "metadata format moved");
        node_tree
            .insert(KEY_FORMAT, FORMAT_VERSION.to_be_bytes().as_slice())
            .map_err(sled_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_gets_our_version_and_another_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("node").unwrap();
        check(&tree, false, "d").unwrap();
        check(&tree, true, "d").unwrap();
        tree.insert(KEY_FORMAT, 7u64.to_be_bytes().as_slice())
            .unwrap();
        let e = check(&tree, true, "d").unwrap_err().to_string();
        assert!(
            e.contains("format version 7") && e.contains("reads versions 2 to 3"),
            "{e}"
        );
        // Version 2 is moved to 3.
        tree.insert(KEY_FORMAT, 2u64.to_be_bytes().as_slice())
            .unwrap();
        check(&tree, true, "d").unwrap();
        let v = tree.get(KEY_FORMAT).unwrap().unwrap();
        assert_eq!(v.as_ref(), FORMAT_VERSION.to_be_bytes().as_slice());
        tree.remove(KEY_FORMAT).unwrap();
        let e = check(&tree, true, "d").unwrap_err().to_string();
        assert!(e.contains("format version 1"), "{e}");
    }
}
