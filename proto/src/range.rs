//! Verified range reads: part of a chunk checked against the chunk's blake3
//! hash without the rest of the chunk.
//!
//! blake3 hashes its input as a binary tree of 1 KiB leaves. A chunk is cut
//! into aligned groups of [`GROUP`] bytes (the last may be shorter); when the
//! chunk is longer than one group, every group is a subtree of that tree.
//! A node keeps the chaining value of each group (the outboard, made once
//! per chunk) and answers a read of some groups with their bytes plus the
//! chaining values of the subtrees around them (the proof). The client
//! hashes the bytes, merges them with the proof up to the root and compares
//! the root with the chunk's name, so a node cannot serve bytes that are not
//! the chunk's.
//!
//! The tree walk is the same on both sides: a subtree wholly outside the
//! range is one proof value, one wholly inside is hashed from the bytes, and
//! one partly inside is split where blake3 splits it
//! ([`left_subtree_len`]). Proof values are in the order of that walk.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

/// Bytes in one group: the unit of a verified range read.
pub const GROUP: u64 = 16 * 1024;

/// The group-aligned byte range `[start, end)` that holds bytes
/// `[from, to)` of a chunk of `len` bytes.
pub fn aligned(from: u64, to: u64, len: u64) -> (u64, u64) {
    let start = from / GROUP * GROUP;
    let end = to.div_ceil(GROUP).saturating_mul(GROUP).min(len);
    (start.min(end), end)
}

/// The chaining value of the group at byte `at` of a chunk longer than
/// one group, from its bytes.
pub fn group_cv(at: u64, bytes: &[u8]) -> ChainingValue {
    blake3::Hasher::new()
        .set_input_offset(at)
        .update(bytes)
        .finalize_non_root()
}

/// A chunk's outboard: the chaining values of its groups, and of every
/// complete aligned run of 2, 4, 8, ... groups, so that a proof costs a
/// few merges instead of one per group (16 KiB for a 4 MiB chunk).
#[derive(Debug, Clone)]
pub struct Outboard {
    len: u64,
    /// `levels[k][i]`: groups `[i * 2^k, (i + 1) * 2^k)`; level 0 holds
    /// every group, the last maybe short; higher levels only full runs.
    levels: Vec<Vec<ChainingValue>>,
}

impl Outboard {
    /// The outboard of a whole chunk longer than one group.
    pub fn new(data: &[u8]) -> Self {
        debug_assert!(data.len() as u64 > GROUP);
        let groups = data
            .chunks(GROUP as usize)
            .enumerate()
            .map(|(i, g)| group_cv(i as u64 * GROUP, g))
            .collect();
        Self::from_groups(data.len() as u64, groups)
    }

    /// The outboard of a chunk of `len` bytes from its groups' values.
    pub fn from_groups(len: u64, groups: Vec<ChainingValue>) -> Self {
        let mut full = ((len / GROUP) as usize).min(groups.len());
        let mut levels = vec![groups];
        while full >= 2 {
            let below = &levels[levels.len() - 1];
            let next: Vec<ChainingValue> = (0..full / 2)
                .map(|i| merge_subtrees_non_root(&below[2 * i], &below[2 * i + 1], Mode::Hash))
                .collect();
            full /= 2;
            levels.push(next);
        }
        Self { len, levels }
    }

    /// The chunk's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the chunk is empty (never, for an outboard of a real chunk).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chaining value of group `i`.
    pub fn group(&self, i: usize) -> Option<&ChainingValue> {
        self.levels[0].get(i)
    }

    /// Whether the groups' values are as many as the length needs.
    fn well_formed(&self) -> bool {
        self.len > GROUP && self.levels[0].len() as u64 == self.len.div_ceil(GROUP)
    }

    /// The chaining value of subtree `[s, e)`.
    fn subtree(&self, s: u64, e: u64) -> Option<ChainingValue> {
        let n = e - s;
        if n <= GROUP {
            return self.levels[0].get((s / GROUP) as usize).copied();
        }
        let run = n / GROUP;
        if n.is_multiple_of(GROUP) && run.is_power_of_two() && (s / GROUP).is_multiple_of(run) {
            let level = self.levels.get(run.trailing_zeros() as usize);
            if let Some(cv) = level.and_then(|l| l.get((s / GROUP / run) as usize)) {
                return Some(*cv);
            }
        }
        let mid = s + left_subtree_len(n);
        Some(merge_subtrees_non_root(
            &self.subtree(s, mid)?,
            &self.subtree(mid, e)?,
            Mode::Hash,
        ))
    }

    /// The root hash: a node checks an outboard against the chunk's name.
    pub fn root(&self) -> Option<[u8; 32]> {
        if !self.well_formed() {
            return None;
        }
        let mid = left_subtree_len(self.len);
        let (l, r) = (self.subtree(0, mid)?, self.subtree(mid, self.len)?);
        Some(*merge_subtrees_root(&l, &r, Mode::Hash).as_bytes())
    }

    /// The proof for bytes `[start, end)` (from [`aligned`]).
    pub fn prove(&self, start: u64, end: u64) -> Option<Vec<ChainingValue>> {
        fn walk(
            ob: &Outboard,
            (s, e): (u64, u64),
            (start, end): (u64, u64),
            out: &mut Vec<ChainingValue>,
        ) -> Option<()> {
            if e <= start || s >= end {
                out.push(ob.subtree(s, e)?);
            } else if !(start <= s && e <= end) {
                let mid = s + left_subtree_len(e - s);
                walk(ob, (s, mid), (start, end), out)?;
                walk(ob, (mid, e), (start, end), out)?;
            }
            Some(())
        }
        if !self.well_formed() || start >= end || end > self.len {
            return None;
        }
        let mut out = Vec::new();
        let mid = left_subtree_len(self.len);
        walk(self, (0, mid), (start, end), &mut out)?;
        walk(self, (mid, self.len), (start, end), &mut out)?;
        Some(out)
    }
}

/// Whether `data`, claimed to be bytes `[start, start + data.len())` of a
/// chunk of `len` bytes named `hash`, is exactly that, given `proof`.
pub fn verify(hash: &[u8; 32], len: u64, start: u64, data: &[u8], proof: &[ChainingValue]) -> bool {
    fn cv(
        (s, e): (u64, u64),
        start: u64,
        data: &[u8],
        proof: &mut std::slice::Iter<'_, ChainingValue>,
    ) -> Option<ChainingValue> {
        let end = start + data.len() as u64; // checked by the caller
        if e <= start || s >= end {
            return proof.next().copied();
        }
        if start <= s && e <= end {
            let bytes = &data[(s - start) as usize..(e - start) as usize];
            return Some(
                blake3::Hasher::new()
                    .set_input_offset(s)
                    .update(bytes)
                    .finalize_non_root(),
            );
        }
        // Partly inside: the range's edges are group boundaries, so this
        // subtree is more than one group and splits.
        if e - s <= GROUP {
            return None;
        }
        let mid = s + left_subtree_len(e - s);
        let l = cv((s, mid), start, data, proof)?;
        let r = cv((mid, e), start, data, proof)?;
        Some(merge_subtrees_non_root(&l, &r, Mode::Hash))
    }
    // Everything here may come from a hostile node: no overflow, no panic.
    let Some(end) = start.checked_add(data.len() as u64) else {
        return false;
    };
    if len > crate::CHUNK_SIZE as u64 {
        return false;
    }
    if start == 0 && end == len {
        return proof.is_empty() && blake3::hash(data).as_bytes() == hash;
    }
    let edges_ok = start.is_multiple_of(GROUP) && (end.is_multiple_of(GROUP) || end == len);
    if len <= GROUP || data.is_empty() || end > len || !edges_ok {
        return false;
    }
    let mut it = proof.iter();
    let mid = left_subtree_len(len);
    let (Some(l), Some(r)) = (
        cv((0, mid), start, data, &mut it),
        cv((mid, len), start, data, &mut it),
    ) else {
        return false;
    };
    it.next().is_none() && merge_subtrees_root(&l, &r, Mode::Hash).as_bytes() == hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 10) as u8)
            .collect()
    }

    #[test]
    fn every_range_of_odd_and_whole_sizes_verifies_and_any_change_fails() {
        let g = GROUP as usize;
        for len in [g + 1, 2 * g, 3 * g - 5, 5 * g + 1000, 16 * g, 256 * g] {
            let d = data(len, len as u8);
            let hash = *blake3::hash(&d).as_bytes();
            let ob = Outboard::new(&d);
            assert_eq!(ob.root(), Some(hash), "len {len}");
            let groups = len.div_ceil(g);
            let picks: Vec<(usize, usize)> = if groups <= 16 {
                (0..groups)
                    .flat_map(|a| (a + 1..=groups).map(move |b| (a, b)))
                    .collect()
            } else {
                vec![
                    (0, 1),
                    (7, 8),
                    (groups - 1, groups),
                    (3, 9),
                    (0, groups),
                    (100, 129),
                ]
            };
            for (a, b) in picks {
                // From the first byte of group a to the first of group b - 1.
                let (from, to) = (a as u64 * GROUP, (b as u64 - 1) * GROUP + 1);
                let (s, e) = aligned(from, to, len as u64);
                assert_eq!(
                    (s, e),
                    (a as u64 * GROUP, (b as u64 * GROUP).min(len as u64))
                );
                let bytes = &d[s as usize..e as usize];
                let proof = if (s, e) == (0, len as u64) {
                    Vec::new()
                } else {
                    ob.prove(s, e).expect("proof")
                };
                assert!(
                    verify(&hash, len as u64, s, bytes, &proof),
                    "len {len} [{a},{b})"
                );
                // One flipped bit in the bytes, or in any proof value, fails.
                let mut bad = bytes.to_vec();
                let mid = bad.len() / 2;
                bad[mid] ^= 1;
                assert!(!verify(&hash, len as u64, s, &bad, &proof));
                for i in 0..proof.len() {
                    let mut p = proof.clone();
                    p[i][0] ^= 1;
                    assert!(!verify(&hash, len as u64, s, bytes, &p));
                }
                // The bytes claimed at another place, or a proof cut short or
                // lengthened, fail.
                if s >= GROUP {
                    assert!(!verify(&hash, len as u64, s - GROUP, bytes, &proof));
                }
                if let Some((_, rest)) = proof.split_last() {
                    assert!(!verify(&hash, len as u64, s, bytes, rest));
                }
                let mut longer = proof.clone();
                longer.push([0; 32]);
                assert!(!verify(&hash, len as u64, s, bytes, &longer));
            }
        }
    }

    #[test]
    fn a_wrong_length_or_outboard_is_refused() {
        let d = data(4 * GROUP as usize, 9);
        let hash = *blake3::hash(&d).as_bytes();
        let ob = Outboard::new(&d);
        let proof = ob.prove(GROUP, 2 * GROUP).expect("proof");
        let bytes = &d[GROUP as usize..2 * GROUP as usize];
        assert!(verify(&hash, d.len() as u64, GROUP, bytes, &proof));
        assert!(!verify(&hash, d.len() as u64 + 1, GROUP, bytes, &proof));
        // A length that ends inside the range is refused. (A wrong length
        // with the same path to the range can pass, but then the bytes are
        // still the chunk's: the root binds every value on the path.)
        assert!(!verify(&hash, GROUP + GROUP / 2, GROUP, bytes, &proof));
        assert!(!verify(&hash, d.len() as u64, GROUP + 1, bytes, &proof));
        assert!(ob.prove(GROUP, 5 * GROUP).is_none());
        let mut groups: Vec<_> = (0..4).map(|i| *ob.group(i).expect("group")).collect();
        groups[3][5] ^= 1;
        let bad = Outboard::from_groups(d.len() as u64, groups.clone());
        assert_ne!(bad.root(), Some(hash));
        assert_eq!(
            Outboard::from_groups(d.len() as u64, groups[..3].to_vec()).root(),
            None
        );
    }
}
