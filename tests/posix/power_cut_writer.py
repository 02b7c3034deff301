#!/usr/bin/env python3
"""Writes to a quizfs mount as a web application does, for the power-cut test
(t155), and reports each write the filesystem acknowledged, one line each:

  ack NAME LEN     NAME's close (or, for a renamed upload, its rename) returned
  synced V         version V of versioned.bin was fsynced
  txn DB N         SQLite transaction N (20 rows) of database DB committed
  scattered HEX    scattered-R.bin was written in 4,096 random 4 KiB pieces
                   and fsynced; HEX is the sha256 of its content then

Five threads: uploads (open O_CREAT|O_TRUNC, write, close); renamed uploads
(write a temporary name, close, rename into place); one file overwritten
version after version with an fsync each; SQLite transactions (rollback
journal, synchronous=full, as tests/posix/sqlite_crash.py writes them, which
verifies them); and one file written once in scattered pieces. It stops when
its standard input closes, after the operation in progress. The content of
NAME is content(NAME, LEN) below; the test computes the same.

`power_cut_writer.py sha256 PATH HEX` checks a file's sha256 instead.

It runs as its own process so that the test process holds no file of the
mount open when it starts processes (an exec closes inherited descriptors,
and a close flushes to the cluster).
"""
import hashlib
import os
import random
import sqlite3
import sys
import threading

SIZES = [1 << 10, 37 << 10, 100 << 10, 300 << 10]
VERSION_BYTES = 64 << 10


def content(name, length):
    """Lines of the name and the line's offset: every byte depends on both."""
    out = bytearray()
    while len(out) < length:
        out += f"{name} {len(out):010}\n".encode()
    return bytes(out[:length])


stop = threading.Event()
out_lock = threading.Lock()


def report(line):
    with out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def write_file(path, data, sync=False):
    """open(O_CREAT|O_TRUNC), write all of `data`, fsync if asked, close;
    raises OSError if any of them fails (close included)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    except OSError:
        os.close(fd)
        raise
    os.close(fd)


def uploads(root, tag, rnd):
    n = 0
    while not stop.is_set():
        name = f"{tag}-{rnd}-{n:05}.jpg"
        length = SIZES[n % len(SIZES)]
        n += 1
        try:
            if tag == "renamed":
                tmp = os.path.join(root, ".tmp-" + name)
                write_file(tmp, content(name, length))
                os.rename(tmp, os.path.join(root, name))
            else:
                write_file(os.path.join(root, name), content(name, length))
        except OSError as e:
            print(f"{name}: {e}", file=sys.stderr)
            continue
        report(f"ack {name} {length}")


def versions(root, rnd):
    v = 0
    while not stop.is_set():
        v += 1
        tag = f"v{rnd}-{v}"
        try:
            write_file(os.path.join(root, "versioned.bin"), content(tag, VERSION_BYTES), sync=True)
        except OSError as e:
            print(f"versioned.bin {tag}: {e}", file=sys.stderr)
            continue
        report(f"synced {tag}")


def transactions(root, rnd):
    name = f"cut-{rnd}.db"
    db = sqlite3.connect(os.path.join(root, name), isolation_level=None)
    db.execute("PRAGMA journal_mode=delete")
    db.execute("PRAGMA synchronous=full")
    db.execute("CREATE TABLE IF NOT EXISTS t (txn INTEGER, k INTEGER, v BLOB)")
    db.execute("CREATE INDEX IF NOT EXISTS t_txn ON t (txn)")
    i = 0
    while not stop.is_set():
        i += 1
        try:
            db.execute("BEGIN")
            for k in range(20):
                db.execute("INSERT INTO t VALUES (?, ?, ?)", (i, k, os.urandom(2000)))
            db.execute("COMMIT")
        except sqlite3.Error as e:
            print(f"{name} transaction {i}: {e}", file=sys.stderr)
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            continue
        report(f"txn {name} {i}")
    db.close()


def scattered(root, rnd):
    """One file of 16 MiB written in 4,096 random 4 KiB pieces, then
    fsynced once: its commit carries thousands of extents, a large Raft
    entry and a state machine record over sled's inline limit (sled keeps
    those in blob files of their own)."""
    size, piece = 16 << 20, 4096
    model = bytearray(size)
    rng = random.Random(int(rnd) + 7)
    path = os.path.join(root, f"scattered-{rnd}.bin")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, size)
            for _ in range(4096):
                at = rng.randrange(size // piece) * piece
                data = rng.randbytes(piece)
                os.pwrite(fd, data, at)
                model[at:at + piece] = data
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        print(f"{path}: {e}", file=sys.stderr)
        return
    report(f"scattered {hashlib.sha256(model).hexdigest()}")


def main():
    if sys.argv[1] == "sha256":
        with open(sys.argv[2], "rb") as f:
            got = hashlib.sha256(f.read()).hexdigest()
        if got != sys.argv[3]:
            raise SystemExit(f"{sys.argv[2]}: sha256 {got}, not the fsynced {sys.argv[3]}")
        print(f"{sys.argv[2]}: the fsynced content")
        return
    root, rnd = sys.argv[1], sys.argv[2]
    threads = [
        threading.Thread(target=uploads, args=(root, "upload", rnd)),
        threading.Thread(target=uploads, args=(root, "renamed", rnd)),
        threading.Thread(target=versions, args=(root, rnd)),
        threading.Thread(target=transactions, args=(root, rnd)),
        threading.Thread(target=scattered, args=(root, rnd)),
    ]
    for t in threads:
        t.start()
    sys.stdin.read()
    stop.set()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
