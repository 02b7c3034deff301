//! Where a chunk lives: rendezvous (highest-random-weight) hashing over the
//! cluster's placement set (every member that is not draining).
//!
//! Each node gets a score from the chunk's hash and the node's id; the
//! [`REPLICAS`] nodes with the highest scores hold the chunk. Adding a node
//! moves only the chunks for which the new node scores in the top R (about
//! R/N of them), and removing one moves only the chunks it held. Clients
//! and nodes compute the same answer from the same membership; while two
//! views differ (a membership change on its way) the healer brings every
//! chunk to its holders.

use crate::ChunkHash;

/// Copies of each chunk (R) unless the cluster was started with another
/// `--replicas`, when the placement set has at least R nodes.
pub const REPLICAS: usize = 3;

/// Fewest and most copies a cluster may keep.
pub const REPLICAS_RANGE: std::ops::RangeInclusive<usize> = 2..=9;

fn mix(mut x: u64) -> u64 {
    // splitmix64's finalizer: a bijection that spreads every input bit.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The score of `node` for `hash`: the chunk's hash is already uniform, so
/// mixing its first word with the node's id is enough.
pub fn score(hash: &ChunkHash, node: u64) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&hash.0[..8]);
    mix(u64::from_le_bytes(word) ^ mix(node.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// `nodes` in the order they are asked for `hash`: its holders first.
pub fn rank(hash: &ChunkHash, nodes: &[u64]) -> Vec<u64> {
    let mut ranked: Vec<(u64, u64)> = nodes.iter().map(|&n| (score(hash, n), n)).collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    ranked.into_iter().map(|(_, n)| n).collect()
}

/// The nodes that hold `hash`: the first `replicas` of [`rank`].
pub fn holders(hash: &ChunkHash, nodes: &[u64], replicas: usize) -> Vec<u64> {
    let mut r = rank(hash, nodes);
    r.truncate(replicas);
    r
}

/// Whether `node` is among the holders of `hash`, without sorting.
pub fn holds(hash: &ChunkHash, nodes: &[u64], replicas: usize, node: u64) -> bool {
    if !nodes.contains(&node) {
        return false;
    }
    let mine = score(hash, node);
    let above = nodes
        .iter()
        .filter(|&&n| n != node && (score(hash, n), n) > (mine, node))
        .count();
    above < replicas
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(n: usize) -> Vec<ChunkHash> {
        (0..n as u64)
            .map(|i| ChunkHash::of(&i.to_le_bytes()))
            .collect()
    }

    #[test]
    fn three_nodes_hold_everything() {
        for h in hashes(100) {
            let mut got = holders(&h, &[1, 2, 3], REPLICAS);
            got.sort();
            assert_eq!(got, vec![1, 2, 3]);
        }
    }

    #[test]
    fn holds_agrees_with_holders() {
        let nodes = [1, 2, 3, 101, 102, 103, 104];
        for h in hashes(500) {
            let top = holders(&h, &nodes, REPLICAS);
            for n in nodes {
                assert_eq!(holds(&h, &nodes, REPLICAS, n), top.contains(&n));
            }
            assert!(!holds(&h, &nodes, REPLICAS, 999));
        }
    }

    #[test]
    fn adding_a_node_moves_only_its_share() {
        let before = [1u64, 2, 3, 101];
        let after = [1u64, 2, 3, 101, 102];
        let all = hashes(20_000);
        let mut moved = 0usize;
        let mut share = 0usize;
        for h in &all {
            let a = holders(h, &before, REPLICAS);
            let b = holders(h, &after, REPLICAS);
            // A chunk changes holders only by gaining the new node.
            let gained: Vec<_> = b.iter().filter(|n| !a.contains(n)).collect();
            assert!(gained.is_empty() || gained == vec![&102], "{a:?} -> {b:?}");
            moved += gained.len();
            share += usize::from(b.contains(&102));
        }
        // The new node holds R/N of the chunks, give or take sampling noise.
        let expected = all.len() * REPLICAS / after.len();
        assert_eq!(moved, share);
        assert!(
            share.abs_diff(expected) < expected / 20,
            "new node holds {share}, expected about {expected}"
        );
    }

    #[test]
    fn shares_are_even() {
        let nodes = [1u64, 2, 3, 101, 102];
        let all = hashes(20_000);
        let mut count = std::collections::HashMap::new();
        for h in &all {
            for n in holders(h, &nodes, REPLICAS) {
                *count.entry(n).or_insert(0usize) += 1;
            }
        }
        let expected = all.len() * REPLICAS / nodes.len();
        for (n, c) in count {
            assert!(
                c.abs_diff(expected) < expected / 20,
                "node {n}: {c} vs {expected}"
            );
        }
    }
}
