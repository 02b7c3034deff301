#!/usr/bin/env python3
"""Per-operation latency in a mounted directory, one operation at a time.

Usage: oplat.py DIR [N]

Creates DIR/oplat-<pid>, then for N names (default 300): a stat of the
missing name (a negative lookup), mknod, chmod; then N uploads of 100 KiB
(open O_CREAT|O_EXCL, one write, close) timed per system call; then stat,
chmod, rename and unlink of those files. Prints p50, mean, p99 and max in
milliseconds for each, and removes what it made. Used to find which step
of an operation costs what (BENCHMARKS.md, "Speed work").
"""

import os
import shutil
import sys
import time


def summary(name, samples):
    s = sorted(samples)
    p99 = s[min(len(s) - 1, int(len(s) * 0.99))]
    mean = sum(s) / len(s)
    print(
        f"{name:14s} p50 {s[len(s) // 2] * 1e3:7.2f}  mean {mean * 1e3:7.2f}"
        f"  p99 {p99 * 1e3:7.2f}  max {s[-1] * 1e3:7.2f} ms"
    )


def timed(samples, fn, *args):
    t = time.perf_counter()
    fn(*args)
    samples.append(time.perf_counter() - t)


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: oplat.py DIR [N]")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    d = os.path.join(sys.argv[1], f"oplat-{os.getpid()}")
    os.mkdir(d)
    try:
        neg, mknod, chmod = [], [], []
        for i in range(n):
            p = f"{d}/n{i}"
            t = time.perf_counter()
            try:
                os.stat(p)
                sys.exit(f"{p} exists")
            except FileNotFoundError:
                neg.append(time.perf_counter() - t)
            timed(mknod, os.mknod, p, 0o100644)
            timed(chmod, os.chmod, p, 0o600)
        summary("neg. lookup", neg)
        summary("mknod", mknod)
        summary("chmod", chmod)

        data = os.urandom(100 * 1024)
        opn, wr, cl, tot = [], [], [], []
        for i in range(n):
            t0 = time.perf_counter()
            fd = os.open(f"{d}/u{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            t1 = time.perf_counter()
            os.write(fd, data)
            t2 = time.perf_counter()
            os.close(fd)
            t3 = time.perf_counter()
            opn.append(t1 - t0)
            wr.append(t2 - t1)
            cl.append(t3 - t2)
            tot.append(t3 - t0)
        summary("upload: open", opn)
        summary("upload: write", wr)
        summary("upload: close", cl)
        summary("upload: total", tot)
        print(f"{'uploads/s':14s} {n / sum(tot):.1f}")

        st, ch, rn, ul = [], [], [], []
        for i in range(n):
            timed(st, os.stat, f"{d}/u{i}")
        for i in range(n):
            timed(ch, os.chmod, f"{d}/u{i}", 0o600)
        for i in range(n):
            timed(rn, os.rename, f"{d}/u{i}", f"{d}/r{i}")
        for i in range(n):
            timed(ul, os.unlink, f"{d}/r{i}")
        summary("stat", st)
        summary("chmod", ch)
        summary("rename", rn)
        summary("unlink", ul)
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
