#!/usr/bin/env python3
"""Close-to-open semantics between two mounts of one volume.

Usage: two_mounts.py MOUNT_A MOUNT_B ATTR_TIMEOUT_SECS

- once close() returns on A, open() on B sees the new content and size,
  also when B read the old content just before (its cache must not win);
- a file replaced by rename on A opens as the new file on B, never ESTALE;
- a deletion or rename on A is visible on B within the attribute timeout.
"""

import os
import sys
import time

A, B, TTL = sys.argv[1], sys.argv[2], float(sys.argv[3])
checks = 0


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        raise AssertionError(what)


def read(p):
    with open(p, "rb") as f:
        return f.read()


def write(p, data):
    with open(p, "wb") as f:
        f.write(data)


def eventually(cond, what, limit):
    """cond() must hold within `limit` seconds; returns the time it took."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > limit:
            raise AssertionError(f"{what}: not seen within {limit:.1f} s")
        time.sleep(0.02)
    return time.monotonic() - start


def main():
    a = os.path.join(A, "c2o")
    b = os.path.join(B, "c2o")
    os.mkdir(a)
    # The directory appears on B within the entry timeout.
    eventually(lambda: os.path.isdir(b), "new directory on B", TTL + 2)

    # Overwrites of one file with different sizes; B reads between them.
    f_a, f_b = os.path.join(a, "photo.jpg"), os.path.join(b, "photo.jpg")
    for i in range(40):
        size = [100, 5000, 1 << 20, 3, 300_000, (4 << 20) + 17][i % 6]
        data = bytes([(i * 13 + j) % 256 for j in range(min(size, 4096))]) * (size // 4096 + 1)
        data = data[:size]
        write(f_a, data)
        got = read(f_b)
        check(got == data, f"round {i}: B read {len(got)} bytes, A wrote {size}")
        check(os.stat(f_b).st_size == size, f"round {i}: size on B")

    # B keeps the file open while A rewrites it: a new open on B sees it.
    write(f_a, b"version 1")
    with open(f_b, "rb") as held:
        check(held.read() == b"version 1", "held open on B")
        write(f_a, b"version 2, longer")
        check(read(f_b) == b"version 2, longer", "a new open on B sees A's close")

    # Atomic replace by rename on A: B's open finds the new file.
    for i in range(20):
        tmp = os.path.join(a, f".tmp{i}")
        write(tmp, f"generation {i}".encode())
        os.rename(tmp, f_a)
        got = read(f_b)
        check(got == f"generation {i}".encode(), f"rename round {i}: B read {got!r}")

    # In place (O_TRUNC, write, close) on A: B reads the old or the new
    # file, never an empty or short one, also while A is between its open
    # and its close.
    old_v, new_v = b"old " * 4096, b"new " * 4096
    write(f_a, old_v)
    with open(f_a, "wb") as w:
        check(read(f_b) == old_v, "B reads the old file while A holds it truncated")
        w.write(new_v)
        check(read(f_b) == old_v, "B reads the old file while A's writes are pending")
    check(read(f_b) == new_v, "B reads the new file after A's close")

    # A file B holds open is deleted on A: B's descriptor still stats (no
    # link) and reads to the end, as on a local filesystem.
    victim_a, victim_b = os.path.join(a, "victim"), os.path.join(b, "victim")
    write(victim_a, b"still here" * 1000)
    with open(victim_b, "rb") as held:
        head = held.read(10)
        os.unlink(victim_a)
        time.sleep(TTL + 0.2)  # B's cached attributes expire: it must ask
        st = os.fstat(held.fileno())
        check(st.st_size == 10000 and st.st_nlink == 0,
              f"fstat of a file deleted elsewhere: size {st.st_size}, {st.st_nlink} links")
        check(head + held.read() == b"still here" * 1000, "read to the end after the deletion")

    # Deletion and rename on A are visible on B within the attribute timeout.
    write(os.path.join(a, "gone"), b"x")
    check(read(os.path.join(b, "gone")) == b"x", "B sees the file")
    os.unlink(os.path.join(a, "gone"))
    t = eventually(lambda: not os.path.exists(os.path.join(b, "gone")), "deletion on B", TTL + 1)
    os.rename(os.path.join(a, "photo.jpg"), os.path.join(a, "moved.jpg"))
    t2 = eventually(lambda: os.path.exists(os.path.join(b, "moved.jpg"))
                    and not os.path.exists(f_b), "rename on B", TTL + 1)
    print(f"two_mounts: {checks} checks passed; deletion seen after {t:.2f} s, "
          f"rename after {t2:.2f} s (attr timeout {TTL} s)")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}")
        sys.exit(1)
