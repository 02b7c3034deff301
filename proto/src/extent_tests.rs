//! The extent rules against a plain byte array: every sequence of writes,
//! truncations, punches and copies reads back exactly as the array holds
//! it, and SEEK_DATA / SEEK_HOLE agree with which bytes were ever written.

use proptest::prelude::*;

use super::{ExtentMap, Piece};

/// The model: the bytes, and which of them lie in data (not a hole).
#[derive(Debug, Default)]
struct Model {
    bytes: Vec<u8>,
    data: Vec<bool>,
}

impl Model {
    fn resize(&mut self, size: usize) {
        self.bytes.resize(size, 0);
        self.data.resize(size, false);
    }
}

/// The sources: buffers by number, as the mount's in-memory writes are.
#[derive(Debug, Default)]
struct Store(Vec<Vec<u8>>);

#[derive(Debug, Clone)]
enum Op {
    /// Write `len` bytes at `offset`, stored at `pad` inside a new source.
    Write { offset: u64, len: u64, pad: u64 },
    /// Truncate (or extend) to `size`.
    Truncate { size: u64 },
    /// Punch a hole (inside the file's size).
    Punch { offset: u64, len: u64 },
    /// Copy `len` bytes from `src` to `dst` (inside the file, as
    /// copy_file_range does; the destination may extend it).
    Copy { src: u64, dst: u64, len: u64 },
    /// Write again into the newest source, at the same place, as an
    /// overwrite of a buffer still open does.
    Rewrite { offset: u64, len: u64 },
}

const MAX: u64 = 1 << 14;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..MAX, 1..MAX / 4, 0..64u64).prop_map(|(offset, len, pad)| Op::Write { offset, len, pad }),
        2 => (0..MAX).prop_map(|size| Op::Truncate { size }),
        2 => (0..MAX, 0..MAX / 4).prop_map(|(offset, len)| Op::Punch { offset, len }),
        2 => (0..MAX, 0..MAX, 0..MAX / 4).prop_map(|(src, dst, len)| Op::Copy { src, dst, len }),
        1 => (0..MAX, 1..MAX / 8).prop_map(|(offset, len)| Op::Rewrite { offset, len }),
    ]
}

fn fill(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(131) ^ i.wrapping_mul(7)) as u8 | 1)
        .collect()
}

/// Reads `[0, size)` through the map.
fn read(map: &ExtentMap<usize>, store: &Store, size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for s in map.lookup(0, size) {
        assert_eq!(s.offset, out.len() as u64, "spans are consecutive");
        match s.data {
            None => out.resize(out.len() + s.len as usize, 0),
            Some((src, at)) => {
                out.extend_from_slice(&store.0[src][at as usize..(at + s.len) as usize]);
            }
        }
    }
    out
}

/// The map's own invariants: in order, no overlap, nothing empty.
fn check_shape(map: &ExtentMap<usize>) {
    let mut end = 0;
    for (o, p) in map.iter() {
        assert!(p.len > 0, "empty extent at {o}");
        assert!(o >= end, "extent at {o} overlaps the one ending at {end}");
        end = o + p.len;
    }
}

fn run(ops: &[Op]) {
    let mut m = Model::default();
    let mut map = ExtentMap::<usize>::new();
    let mut store = Store::default();
    let mut size = 0u64;
    for op in ops {
        match *op {
            Op::Write { offset, len, pad } => {
                let id = store.0.len();
                let mut buf = vec![0xEE; pad as usize];
                let data = fill(id, len as usize);
                buf.extend_from_slice(&data);
                store.0.push(buf);
                map.splice(
                    offset,
                    Piece {
                        len,
                        src: id,
                        at: pad,
                    },
                );
                let end = (offset + len) as usize;
                size = size.max(end as u64);
                m.resize(size as usize);
                m.bytes[offset as usize..end].copy_from_slice(&data);
                m.data[offset as usize..end].fill(true);
            }
            Op::Rewrite { offset, len } => {
                // Only where the newest source alone covers the range.
                let Some(id) = store.0.len().checked_sub(1) else {
                    continue;
                };
                let spans = map.lookup(offset, offset + len);
                let Some((_, at)) = spans.first().and_then(|s| s.data) else {
                    continue;
                };
                let one = spans.len() == 1 && spans[0].data.is_some_and(|(s, _)| s == id);
                // In place only where no other extent shares those bytes
                // (the mount flushes before it copies for that reason).
                let shared = map
                    .iter()
                    .filter(|(_, p)| p.src == id && p.at < at + len && at < p.at + p.len)
                    .count();
                if !one || shared != 1 {
                    continue;
                }
                let data = fill(id + 1000, len as usize);
                store.0[id][at as usize..(at + len) as usize].copy_from_slice(&data);
                m.bytes[offset as usize..(offset + len) as usize].copy_from_slice(&data);
            }
            Op::Truncate { size: s } => {
                map.cut(s);
                size = s;
                m.resize(s as usize);
            }
            Op::Punch { offset, len } => {
                let end = (offset + len).min(size);
                if offset >= end {
                    continue;
                }
                map.punch(offset, end);
                m.bytes[offset as usize..end as usize].fill(0);
                m.data[offset as usize..end as usize].fill(false);
            }
            Op::Copy { src, dst, len } => {
                let len = len.min(size.saturating_sub(src));
                if len == 0 {
                    continue;
                }
                // The source is read before the destination changes.
                let from = map.clone();
                map.copy_from(&from, src, dst, len);
                let bytes = m.bytes[src as usize..(src + len) as usize].to_vec();
                let data = m.data[src as usize..(src + len) as usize].to_vec();
                size = size.max(dst + len);
                m.resize(size as usize);
                m.bytes[dst as usize..(dst + len) as usize].copy_from_slice(&bytes);
                m.data[dst as usize..(dst + len) as usize].copy_from_slice(&data);
            }
        }
        check_shape(&map);
        assert!(map.end() <= size, "an extent past the size {size}");
    }
    assert_eq!(read(&map, &store, size), m.bytes, "content after {ops:?}");
    // SEEK_DATA and SEEK_HOLE from every offset, as lseek caps them.
    for from in (0..size).step_by(97) {
        let want_data = (from as usize..size as usize).find(|&i| m.data[i]);
        let got_data = map.next_data(from).filter(|&d| d < size);
        assert_eq!(
            got_data,
            want_data.map(|d| d as u64),
            "SEEK_DATA from {from}"
        );
        let want_hole = (from as usize..size as usize)
            .find(|&i| !m.data[i])
            .map_or(size, |h| h as u64);
        assert_eq!(
            map.next_hole(from).min(size),
            want_hole,
            "SEEK_HOLE from {from}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn every_sequence_reads_as_the_byte_array(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops);
    }
}

/// The shape of the recorded loss (shared/repro/truncate-across-chunks):
/// cut into the first chunk, grow past three, cut into the third; the
/// first chunk's bytes below the last cut must stay.
#[test]
fn cut_into_a_later_chunk_keeps_an_earlier_one() {
    let cs = 4u64 << 20;
    let mut map = ExtentMap::<usize>::new();
    map.splice(
        0,
        Piece {
            len: cs,
            src: 0,
            at: 0,
        },
    );
    map.cut(0x34dbdc);
    map.cut(0x869cbf); // growing cuts nothing
    assert_eq!(map.end(), 0x34dbdc);
    let spans = map.lookup(0x2456e8, 0x2456e8 + 0x4364e);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].data, Some((0, 0x2456e8)));
}

#[test]
fn sequential_writes_join_into_one_extent() {
    let mut map = ExtentMap::<usize>::new();
    for i in 0..4u64 {
        map.splice(
            i << 20,
            Piece {
                len: 1 << 20,
                src: 7,
                at: i << 20,
            },
        );
    }
    assert_eq!(map.len(), 1);
    assert_eq!(map.end(), 4 << 20);
}

#[test]
fn wire_extents_are_checked() {
    use crate::{self as pb, ChunkHash};
    let h = ChunkHash::of(b"x").0.to_vec();
    let e = |offset, len, at, hash: &Vec<u8>| pb::Extent {
        offset,
        len,
        hash: hash.clone(),
        at,
    };
    let ok = ExtentMap::from_wire(&[e(0, 10, 0, &h), e(10, 5, 20, &h)], 15).unwrap();
    assert_eq!(ok.to_wire().len(), 2);
    let bad = |list: &[pb::Extent], size| ExtentMap::from_wire(list, size).is_err();
    assert!(bad(&[e(0, 10, 0, &vec![1, 2])], 10), "short hash");
    assert!(bad(&[e(0, 0, 0, &h)], 10), "empty extent");
    assert!(bad(&[e(0, 11, 0, &h)], 10), "past the size");
    assert!(bad(&[e(0, 10, (4 << 20) - 5, &h)], 10), "past the chunk");
    assert!(bad(&[e(5, 10, 0, &h), e(0, 3, 0, &h)], 20), "out of order");
    assert!(bad(&[e(0, 10, 0, &h), e(9, 3, 0, &h)], 20), "overlap");
    assert!(bad(&[e(u64::MAX, 10, 0, &h)], u64::MAX), "overflow");
}
