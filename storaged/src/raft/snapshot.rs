//! The snapshot file: the whole state machine tree as a stream of records,
//! so that building, sending and installing a snapshot never holds it in
//! memory at once.
//!
//! Layout: `QZSNAP01`, u32 meta length, bincode `SnapshotMeta`, then records
//! (u32 key length, key, u32 value length, value), then u32::MAX as the end
//! mark and the blake3 hash of every byte before it. A file whose hash does
//! not match is refused before the state machine is touched.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use super::{SnapshotMeta, decode, encode};

const MAGIC: &[u8; 8] = b"QZSNAP01";
const END: u32 = u32::MAX;
/// Records per sled batch while importing.
const IMPORT_BATCH: usize = 10_000;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Hashes everything written through it.
struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn write_block(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| invalid("snapshot record over 4 GiB"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(bytes)
}

fn read_len(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_block(r: &mut impl Read, len: u32) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; len as usize];
    r.read_exact(&mut v)?;
    Ok(v)
}

/// Writes every record of `tree` to a new file at `path`, synced to disk.
pub fn export(tree: &sled::Tree, meta: &SnapshotMeta, path: &Path) -> io::Result<()> {
    let file = File::create(path)?;
    let mut w = HashingWriter {
        inner: BufWriter::new(file),
        hasher: blake3::Hasher::new(),
    };
    w.write_all(MAGIC)?;
    write_block(&mut w, &encode(meta))?;
    for item in tree.iter() {
        let (k, v) = item.map_err(io::Error::other)?;
        write_block(&mut w, &k)?;
        write_block(&mut w, &v)?;
    }
    w.write_all(&END.to_le_bytes())?;
    let hash = w.hasher.finalize();
    let mut inner = w.inner;
    inner.write_all(hash.as_bytes())?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

/// Reads the metadata at the head of a snapshot file.
pub fn read_meta(path: &Path) -> io::Result<SnapshotMeta> {
    let mut r = BufReader::new(File::open(path)?);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid("not a quizfs snapshot"));
    }
    let len = read_len(&mut r)?;
    decode(&read_block(&mut r, len)?).map_err(|e| invalid(format!("snapshot meta: {e}")))
}

/// Walks a snapshot file, checking its structure and hash; `sink` gets each
/// record.
fn walk(
    path: &Path,
    mut sink: impl FnMut(Vec<u8>, Vec<u8>) -> io::Result<()>,
) -> io::Result<SnapshotMeta> {
    let mut r = HashingReader {
        inner: BufReader::new(File::open(path)?),
        hasher: blake3::Hasher::new(),
    };
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid("not a quizfs snapshot"));
    }
    let len = read_len(&mut r)?;
    let meta =
        decode(&read_block(&mut r, len)?).map_err(|e| invalid(format!("snapshot meta: {e}")))?;
    loop {
        let klen = read_len(&mut r)?;
        if klen == END {
            break;
        }
        let k = read_block(&mut r, klen)?;
        let vlen = read_len(&mut r)?;
        let v = read_block(&mut r, vlen)?;
        sink(k, v)?;
    }
    let computed = r.hasher.finalize();
    let mut stored = [0u8; 32];
    r.inner.read_exact(&mut stored)?;
    if computed.as_bytes() != &stored {
        return Err(invalid("snapshot hash mismatch"));
    }
    Ok(meta)
}

/// Checks a snapshot file end to end without using it.
pub fn verify(path: &Path) -> io::Result<SnapshotMeta> {
    walk(path, |_, _| Ok(()))
}

/// Replaces the content of `tree` with the records of a verified snapshot.
pub fn import(path: &Path, tree: &sled::Tree) -> io::Result<SnapshotMeta> {
    verify(path)?;
    tree.clear().map_err(io::Error::other)?;
    let mut batch = sled::Batch::default();
    let mut n = 0;
    let meta = walk(path, |k, v| {
        batch.insert(k, v);
        n += 1;
        if n % IMPORT_BATCH == 0 {
            tree.apply_batch(std::mem::take(&mut batch))
                .map_err(io::Error::other)?;
        }
        Ok(())
    })?;
    tree.apply_batch(batch).map_err(io::Error::other)?;
    Ok(meta)
}
