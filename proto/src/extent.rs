//! A file's content as an ordered, non-overlapping map of extents: (file
//! offset, length) -> (source, offset inside the source). A hole is the
//! absence of an extent and reads as zeros.
//!
//! These rules (splice, cut, punch, copy, lookup, seek) exist only here:
//! the state machine applies them to committed content (the source is a
//! [`ChunkHash`]) and the mount applies the same ones to its pending writes
//! (the source is a chunk or a buffer still in memory). Property tests
//! check every sequence of operations against a plain byte array.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{self as pb, CHUNK_SIZE, ChunkHash, MAX_FILE_SIZE};

/// Where the bytes of one extent come from: `len` bytes of `src` starting
/// at `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece<S> {
    /// Bytes the extent covers.
    pub len: u64,
    /// The source (a chunk, or a buffer).
    pub src: S,
    /// Offset of the first byte inside the source.
    pub at: u64,
}

/// One stretch of a lookup: `len` bytes at file offset `offset`, from a
/// source or (`None`) a hole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span<S> {
    /// File offset of the first byte.
    pub offset: u64,
    /// Bytes covered.
    pub len: u64,
    /// The source and offset inside it, or `None` for a hole.
    pub data: Option<(S, u64)>,
}

/// The extent map of one file (or of one mount's pending writes to it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentMap<S> {
    map: BTreeMap<u64, Piece<S>>,
}

impl<S> Default for ExtentMap<S> {
    fn default() -> Self {
        Self {
            map: BTreeMap::new(),
        }
    }
}

impl<S: Clone + PartialEq> ExtentMap<S> {
    /// An empty map: a file that is all hole.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of extents.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when the map has no extent.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The extents in file order, as (file offset, piece).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Piece<S>)> {
        self.map.iter().map(|(&o, p)| (o, p))
    }

    /// The extent that holds byte `offset`, as (its file offset, piece).
    pub fn get(&self, offset: u64) -> Option<(u64, &Piece<S>)> {
        self.map
            .range(..=offset)
            .next_back()
            .filter(|(o, p)| **o + p.len > offset)
            .map(|(&o, p)| (o, p))
    }

    /// Where the last extent ends (0 when empty).
    pub fn end(&self) -> u64 {
        self.map.iter().next_back().map_or(0, |(&o, p)| o + p.len)
    }

    /// Makes `[start, end)` a hole: extents inside go, extents that cross
    /// a boundary are cut at it.
    pub fn punch(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // An extent that starts before `start` and reaches into the range
        // keeps its head, and its tail when it reaches past `end`.
        let before = self
            .map
            .range_mut(..start)
            .next_back()
            .filter(|(o, p)| **o + p.len > start);
        if let Some((&o, p)) = before {
            let p_end = o + p.len;
            p.len = start - o;
            if p_end > end {
                let tail = Piece {
                    len: p_end - end,
                    src: p.src.clone(),
                    at: p.at + (end - o),
                };
                self.map.insert(end, tail);
                return;
            }
        }
        let inside: Vec<u64> = self.map.range(start..end).map(|(&o, _)| o).collect();
        for o in inside {
            let Some(p) = self.map.remove(&o) else {
                continue;
            };
            let p_end = o + p.len;
            if p_end > end {
                let tail = Piece {
                    len: p_end - end,
                    at: p.at + (end - o),
                    src: p.src,
                };
                self.map.insert(end, tail);
            }
        }
    }

    /// Cuts the content at `size`: nothing remains at or past it.
    pub fn cut(&mut self, size: u64) {
        self.punch(size, u64::MAX);
    }

    /// Splices `piece` in at `offset`: whatever covered those bytes is
    /// replaced. A piece that continues its neighbour in the same source
    /// joins it, so sequential writes stay one extent.
    pub fn splice(&mut self, offset: u64, piece: Piece<S>) {
        if piece.len == 0 {
            return;
        }
        self.punch(offset, offset + piece.len);
        let (mut offset, mut piece) = (offset, piece);
        let joins_before = self.map.range(..offset).next_back().is_some_and(|(&o, p)| {
            o + p.len == offset && p.src == piece.src && p.at + p.len == piece.at
        });
        if joins_before {
            if let Some((&o, p)) = self.map.range(..offset).next_back() {
                piece.at = p.at;
                piece.len += p.len;
                offset = o;
            }
        }
        let next = offset + piece.len;
        if let Some(p) = self.map.get(&next) {
            if p.src == piece.src && piece.at + piece.len == p.at {
                piece.len += p.len;
                self.map.remove(&next);
            }
        }
        self.map.insert(offset, piece);
    }

    /// The content of `[start, end)` as consecutive spans, holes included.
    pub fn lookup(&self, start: u64, end: u64) -> Vec<Span<S>> {
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        let mut pos = start;
        let first = self
            .map
            .range(..start)
            .next_back()
            .filter(|(o, p)| **o + p.len > start);
        let pieces = first.into_iter().chain(self.map.range(start..end));
        for (&o, p) in pieces {
            if o > pos {
                out.push(Span {
                    offset: pos,
                    len: o - pos,
                    data: None,
                });
                pos = o;
            }
            let stop = (o + p.len).min(end);
            out.push(Span {
                offset: pos,
                len: stop - pos,
                data: Some((p.src.clone(), p.at + (pos - o))),
            });
            pos = stop;
        }
        if pos < end {
            out.push(Span {
                offset: pos,
                len: end - pos,
                data: None,
            });
        }
        out
    }

    /// Replaces `[dst, dst + len)` with what `[src, src + len)` holds in
    /// `from` (holes included), sharing its sources: a copy moves no data.
    pub fn copy_from(&mut self, from: &ExtentMap<S>, src: u64, dst: u64, len: u64) {
        let spans = from.lookup(src, src.saturating_add(len));
        self.punch(dst, dst.saturating_add(len));
        for s in spans {
            if let Some((source, at)) = s.data {
                let piece = Piece {
                    len: s.len,
                    src: source,
                    at,
                };
                self.splice(dst + (s.offset - src), piece);
            }
        }
    }

    /// Lays every extent of `over` on top of this map (the newer writes
    /// win), as a commit of pending writes does.
    pub fn overlay(&mut self, over: &ExtentMap<S>) {
        for (o, p) in over.iter() {
            self.splice(o, p.clone());
        }
    }

    /// SEEK_DATA: the first offset at or after `from` that lies in an
    /// extent, if any.
    pub fn next_data(&self, from: u64) -> Option<u64> {
        let inside = self
            .map
            .range(..=from)
            .next_back()
            .is_some_and(|(&o, p)| o + p.len > from);
        if inside {
            return Some(from);
        }
        self.map.range(from..).next().map(|(&o, _)| o)
    }

    /// SEEK_HOLE: the first offset at or after `from` that lies in no
    /// extent (the caller caps it at the file's size, the implicit hole).
    pub fn next_hole(&self, from: u64) -> u64 {
        let mut pos = from;
        if let Some((&o, p)) = self.map.range(..=pos).next_back() {
            if o + p.len > pos {
                pos = o + p.len;
            }
        }
        // Extents that touch end to end leave no hole between them.
        while let Some(p) = self.map.get(&pos) {
            pos += p.len;
        }
        pos
    }

    /// Changes every source with `f` (`None` keeps it), joining nothing:
    /// used when a buffer in memory has become a stored chunk.
    pub fn map_sources<T: Clone + PartialEq>(
        &self,
        mut f: impl FnMut(&S) -> Option<T>,
    ) -> Option<ExtentMap<T>> {
        let mut out = ExtentMap::new();
        for (o, p) in self.iter() {
            let piece = Piece {
                len: p.len,
                src: f(&p.src)?,
                at: p.at,
            };
            out.map.insert(o, piece);
        }
        Some(out)
    }

    /// Replaces the source of every extent for which `f` gives one.
    pub fn replace_sources(&mut self, mut f: impl FnMut(&S) -> Option<S>) {
        for p in self.map.values_mut() {
            if let Some(s) = f(&p.src) {
                p.src = s;
            }
        }
    }
}

/// Why a list of extents from the wire was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadExtent {
    /// An extent's hash is not 32 bytes.
    #[error("extent at {offset}: the chunk hash is not 32 bytes")]
    Hash {
        /// The extent's file offset.
        offset: u64,
    },
    /// An extent is empty, or reaches past its chunk or the file's size.
    #[error("extent at {offset}: length {len} at {at} does not fit its chunk or the file")]
    Bounds {
        /// The extent's file offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// Its offset in the chunk.
        at: u64,
    },
    /// The extents are not in order or overlap.
    #[error("extent at {offset} overlaps or precedes the one before it")]
    Order {
        /// The extent's file offset.
        offset: u64,
    },
}

impl ExtentMap<ChunkHash> {
    /// Reads extents from the wire: each names a 32-byte hash, is not
    /// empty, lies within a chunk and below `size`, and they come in
    /// order without overlapping.
    pub fn from_wire(extents: &[pb::Extent], size: u64) -> Result<Self, BadExtent> {
        let mut map = Self::new();
        let mut prev_end = 0u64;
        for e in extents {
            let hash =
                ChunkHash::from_slice(&e.hash).ok_or(BadExtent::Hash { offset: e.offset })?;
            let bounds = BadExtent::Bounds {
                offset: e.offset,
                len: e.len,
                at: e.at,
            };
            let end = e.offset.checked_add(e.len).ok_or(bounds.clone())?;
            let in_chunk = e.at.checked_add(e.len).ok_or(bounds.clone())?;
            if e.len == 0 || end > size || end > MAX_FILE_SIZE || in_chunk > CHUNK_SIZE as u64 {
                return Err(bounds);
            }
            if e.offset < prev_end {
                return Err(BadExtent::Order { offset: e.offset });
            }
            prev_end = end;
            map.map.insert(
                e.offset,
                Piece {
                    len: e.len,
                    src: hash,
                    at: e.at,
                },
            );
        }
        Ok(map)
    }

    /// The extents as they go on the wire.
    pub fn to_wire(&self) -> Vec<pb::Extent> {
        self.iter()
            .map(|(o, p)| pb::Extent {
                offset: o,
                len: p.len,
                hash: p.src.0.to_vec(),
                at: p.at,
            })
            .collect()
    }

    /// How many extents reference each chunk (a chunk's reference count
    /// is the number of extents, over all files, that use it).
    pub fn refs(&self) -> BTreeMap<ChunkHash, u64> {
        let mut out = BTreeMap::new();
        for p in self.map.values() {
            *out.entry(p.src).or_insert(0) += 1;
        }
        out
    }
}

#[cfg(test)]
#[path = "extent_tests.rs"]
mod tests;
