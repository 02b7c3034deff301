#!/usr/bin/env python3
"""RLIMIT_FSIZE on a mount: every call that would make a file larger than
the limit fails with EFBIG and raises SIGXFSZ, and changes nothing.

Usage: fsize_limit.py MOUNT
"""

import ctypes
import errno
import os
import resource
import signal
import sys

signals = []
signal.signal(signal.SIGXFSZ, lambda *a: signals.append(1))
LIMIT = 1 << 20
mount = sys.argv[1]
src = os.path.join(mount, "fsize-src.bin")
with open(src, "wb") as f:
    f.write(b"s" * (2 * LIMIT))
resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))
path = os.path.join(mount, "fsize.bin")
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.pwrite(fd, b"k" * 100, 0)
sfd = os.open(src, os.O_RDONLY)
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def fallocate():
    if libc.fallocate(fd, 0, 0, 2 * LIMIT) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


calls = [
    ("pwrite", lambda: os.pwrite(fd, b"x" * 10, 2 * LIMIT)),
    ("ftruncate", lambda: os.ftruncate(fd, 2 * LIMIT)),
    ("fallocate", fallocate),
    ("copy_file_range", lambda: os.copy_file_range(sfd, fd, 10, 0, 2 * LIMIT)),
]
for name, call in calls:
    before = len(signals)
    try:
        call()
        raise SystemExit(f"{name} past RLIMIT_FSIZE succeeded")
    except OSError as e:
        if e.errno != errno.EFBIG:
            raise SystemExit(f"{name}: {e}, want EFBIG")
    size = os.fstat(fd).st_size
    # Python runs the handler at the next bytecode boundary.
    for _ in range(3):
        pass
    if len(signals) != before + 1:
        raise SystemExit(f"{name}: {len(signals) - before} SIGXFSZ")
    if size != 100:
        raise SystemExit(f"{name} changed the size to {size}")
os.close(fd)
with open(path, "rb") as f:
    if f.read() != b"k" * 100:
        raise SystemExit("the file changed")
print(f"fsize: {len(calls)} calls past RLIMIT_FSIZE got EFBIG and SIGXFSZ")
