#!/usr/bin/env python3
"""SQLite through a crash: `write DB` commits transactions until killed and
prints each one's number once COMMIT has returned; `verify DB N...` checks
that the database passes `PRAGMA integrity_check` and holds every
transaction named (each one whole: its 20 rows).
"""

import os
import sqlite3
import sys

mode, path = sys.argv[1], sys.argv[2]
if mode == "write":
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=delete")
    db.execute("PRAGMA synchronous=full")
    db.execute("CREATE TABLE IF NOT EXISTS t (txn INTEGER, k INTEGER, v BLOB)")
    db.execute("CREATE INDEX IF NOT EXISTS t_txn ON t (txn)")
    i = 0
    while True:
        i += 1
        db.execute("BEGIN")
        for k in range(20):
            db.execute("INSERT INTO t VALUES (?, ?, ?)", (i, k, os.urandom(2000)))
        db.execute("COMMIT")
        print(i, flush=True)
else:
    want = [int(x) for x in sys.argv[3:]]
    # Read-write, as the application reopens it: a hot journal left by the
    # crash is rolled back first, once the crashed client's locks went with
    # its session (the busy timeout waits for that).
    db = sqlite3.connect(path, timeout=60)
    ok = db.execute("PRAGMA integrity_check").fetchall()
    if ok != [("ok",)]:
        raise SystemExit(f"integrity_check: {ok[:5]}")
    rows = dict(db.execute("SELECT txn, count(*) FROM t GROUP BY txn").fetchall())
    missing = [i for i in want if rows.get(i) != 20]
    if missing:
        raise SystemExit(f"committed transactions missing or torn: {missing[:10]}")
    torn = [i for i, n in rows.items() if n != 20]
    if torn:
        raise SystemExit(f"transactions torn: {torn[:10]}")
    print(f"sqlite after the crash: integrity ok, {len(want)} committed transactions all present, {len(rows)} in the database")
