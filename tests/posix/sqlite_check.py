#!/usr/bin/env python3
"""SQLite on a mount: one writer process and reader processes at once.

Usage: sqlite_check.py MOUNT MODE ROUNDS [SECOND_MOUNT] [AUTOCOMMITS]

MODE is `wal` or `delete` (the rollback journal). Each round, a writer
process builds an 8 MiB database (AUTOCOMMITS autocommit inserts, 3,000 by
default, then a 20,000-row
transaction, an UPDATE of every 7th row, a DELETE of every 11th) while two
reader processes on the same mount run `SELECT count(*)` and a sum over an
index every 0.1 s. A reader may be told the database is busy (locking is
SQLite's own business); it must never be told the file is malformed, nor
see a count that no committed state had. After the writer, the database
passes `PRAGMA integrity_check` and holds every row, read afresh on this
mount and, if given, on SECOND_MOUNT.
"""

import multiprocessing as mp
import os
import sqlite3
import sys
import time

MOUNT, MODE, ROUNDS = sys.argv[1], sys.argv[2], int(sys.argv[3])
SECOND = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] != "-" else None
AUTO = int(sys.argv[5]) if len(sys.argv) > 5 else 3000


def expected_rows():
    ids = range(1, AUTO + 20000 + 1)
    return sum(1 for i in ids if i % 11 != 0)


def writer(path, created, done):
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute(f"PRAGMA journal_mode={MODE}")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k INTEGER, v BLOB)")
    db.execute("CREATE INDEX t_k ON t (k)")
    created.set()
    for i in range(1, AUTO + 1):
        db.execute("INSERT INTO t VALUES (?, ?, ?)", (i, i * 7919 % 10007, os.urandom(200)))
    db.execute("BEGIN")
    for i in range(AUTO + 1, AUTO + 20001):
        db.execute("INSERT INTO t VALUES (?, ?, ?)", (i, i * 7919 % 10007, os.urandom(200)))
    db.execute("COMMIT")
    db.execute("UPDATE t SET k = k + 1, v = randomblob(220) WHERE id % 7 = 0")
    db.execute("DELETE FROM t WHERE id % 11 = 0")
    db.close()
    done.set()


def reader(path, done, out):
    """Counts rows until the writer is done; reports errors other than busy."""
    bad, busy, reads, counts = [], 0, 0, set()
    while not done.is_set():
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5, isolation_level=None)
            try:
                # One read transaction: both counts see one committed state.
                db.execute("BEGIN")
                n = db.execute("SELECT count(*) FROM t").fetchone()[0]
                s = db.execute("SELECT count(*) FROM t INDEXED BY t_k WHERE k >= 0").fetchone()[0]
                db.execute("COMMIT")
                if n != s:
                    bad.append(f"table has {n} rows, index {s}")
                counts.add(n)
                reads += 1
            finally:
                db.close()
        except sqlite3.OperationalError as e:
            text = str(e)
            if "locked" in text or "busy" in text:
                busy += 1
            else:
                bad.append(f"{text} ({getattr(e, 'sqlite_errorname', '?')}, {MODE})")
        except sqlite3.DatabaseError as e:
            bad.append(f"{e} ({getattr(e, 'sqlite_errorname', '?')}, {MODE})")
        time.sleep(0.1)
    out.put((reads, busy, bad, sorted(counts)))


def check_final(path, where):
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    ok = db.execute("PRAGMA integrity_check").fetchall()
    n = db.execute("SELECT count(*) FROM t").fetchone()[0]
    db.close()
    if ok != [("ok",)]:
        raise SystemExit(f"{where}: integrity_check: {ok[:5]}")
    if n != expected_rows():
        raise SystemExit(f"{where}: {n} rows, want {expected_rows()}")


def main():
    ctx = mp.get_context("fork")
    total_reads = 0
    for r in range(ROUNDS):
        path = os.path.join(MOUNT, f"sqlite-{MODE}-{r}.db")
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
        created, done, out = ctx.Event(), ctx.Event(), ctx.Queue()
        w = ctx.Process(target=writer, args=(path, created, done))
        readers = [ctx.Process(target=reader, args=(path, done, out)) for _ in range(2)]
        start = time.monotonic()
        w.start()
        if not created.wait(timeout=60):
            raise SystemExit(f"round {r}: the writer did not create the table")
        for p in readers:
            p.start()
        w.join()
        done.set()
        results = [out.get(timeout=60) for _ in readers]
        for p in readers:
            p.join()
        if w.exitcode != 0:
            raise SystemExit(f"round {r}: the writer failed ({w.exitcode})")
        for reads, busy, bad, counts in results:
            total_reads += reads
            if bad:
                raise SystemExit(f"round {r}: a reader saw {len(bad)} errors: {bad[:3]}")
            # Committed states: 0..AUTO rows, AUTO + 20000, the final count.
            torn = [n for n in counts if not (n <= AUTO or n in (AUTO + 20000, expected_rows()))]
            if torn:
                raise SystemExit(f"round {r}: a reader counted rows no commit left: {torn}")
        check_final(path, f"round {r}, this mount")
        if SECOND:
            check_final(os.path.join(SECOND, os.path.basename(path)), f"round {r}, second mount")
        took = time.monotonic() - start
        print(
            f"sqlite {MODE} round {r}: ok in {took:.1f} s, readers "
            + ", ".join(f"{x[0]} reads ({x[1]} busy)" for x in results)
        )
    print(f"sqlite {MODE}: {ROUNDS} rounds ok, {total_reads} concurrent reads, 0 errors")


if __name__ == "__main__":
    main()
