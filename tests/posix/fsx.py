#!/usr/bin/env python3
"""A model-checked random-operation exerciser for one file on a mount.

Usage:
  fsx.py MOUNT [--seed N] [--ops N] [--max-size BYTES] [--max-op BYTES]
         [--other MOUNT2] [--name NAME] [--mix write=60,truncate=0,...]
         [--fill BYTES]
  fsx.py MOUNT --replay OPS_FILE      (a recorded sequence, format below)

Random pwrite, pread, ftruncate, fallocate (allocate, keep-size, punch,
zero range), copy_file_range (inside the file), SEEK_DATA/SEEK_HOLE and
writes through a shared mmap, on files up to --max-size with operations up
to --max-op, across chunk boundaries. They come from two descriptors of
this process and from a second process (served over a pipe, so the order of
every operation is known), all on one mount. Every read is compared with a
model held in memory: the bytes, and which of them lie in data rather than
in a hole (SEEK_DATA/SEEK_HOLE are checked against it where the filesystem
reports holes). Every 1/8th of the run, and at the end, the file is closed,
reopened and compared whole; at the end also on --other (a second mount),
after a reopen there.

It prints its seed first; a failure prints the operation number, the
operations that led to it, and the command that replays the run.

A replay file has one operation per line: `write OFF LEN SIZE_BEFORE`,
`read OFF LEN SIZE`, `truncate 0 NEW OLD`, `skip ...` (ignored), numbers in
hexadecimal, optional trailing `*`.
"""

import argparse
import ctypes
import mmap
import os
import random
import sys

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
SEEK_DATA, SEEK_HOLE = 3, 4

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def fallocate(fd, mode, off, length):
    if libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def pattern(opno, off, length):
    """Bytes that say which operation wrote them and where."""
    base = bytes((opno * 7 + i) & 0xFF or 1 for i in range(251))
    start = off % 251
    reps = (start + length) // 251 + 1
    return (base * reps)[start : start + length]


# ---------------------------------------------------------------- the model


class Model:
    def __init__(self):
        self.bytes = bytearray()
        self.data = bytearray()  # 1 where a byte lies in data

    def size(self):
        return len(self.bytes)

    def resize(self, n):
        if n < len(self.bytes):
            del self.bytes[n:]
            del self.data[n:]
        else:
            self.bytes.extend(bytes(n - len(self.bytes)))
            self.data.extend(bytes(n - len(self.data)))

    def write(self, off, buf):
        end = off + len(buf)
        if end > self.size():
            self.resize(end)
        self.bytes[off:end] = buf
        self.data[off:end] = b"\x01" * len(buf)

    def hole(self, off, end):
        end = min(end, self.size())
        if off < end:
            self.bytes[off:end] = bytes(end - off)
            self.data[off:end] = bytes(end - off)


# ---------------------------------------------------------------- the second process


def serve(path):
    """Runs operations sent by the parent on this process's own descriptor."""
    fd = os.open(path, os.O_RDWR)
    inp = sys.stdin.buffer
    out = sys.stdout.buffer
    while True:
        line = inp.readline()
        if not line:
            break
        words = line.split()
        try:
            if words[0] == b"write":
                off, length = int(words[1]), int(words[2])
                buf = inp.read(length)
                n = os.pwrite(fd, buf, off)
                out.write(b"ok %d\n" % n)
            elif words[0] == b"read":
                off, length = int(words[1]), int(words[2])
                buf = os.pread(fd, length, off)
                out.write(b"ok %d\n" % len(buf))
                out.write(buf)
            elif words[0] == b"truncate":
                os.ftruncate(fd, int(words[1]))
                out.write(b"ok 0\n")
            elif words[0] == b"fsync":
                os.fsync(fd)
                out.write(b"ok 0\n")
            else:
                out.write(b"err unknown\n")
        except OSError as e:
            out.write(b"err %d\n" % e.errno)
        out.flush()
    os.close(fd)


class Other:
    """The parent's end of the second process."""

    def __init__(self, path):
        import subprocess

        self.p = subprocess.Popen(
            [sys.executable, __file__, "--serve", path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def call(self, line, payload=b""):
        self.p.stdin.write(line + b"\n" + payload)
        self.p.stdin.flush()
        head = self.p.stdout.readline().split()
        if head[0] != b"ok":
            raise OSError(int(head[1]), "in the second process")
        return int(head[1])

    def pwrite(self, buf, off):
        return self.call(b"write %d %d" % (off, len(buf)), buf)

    def pread(self, length, off):
        n = self.call(b"read %d %d" % (off, length))
        return self.p.stdout.read(n)

    def ftruncate(self, size):
        self.call(b"truncate %d" % size)

    def fsync(self):
        self.call(b"fsync")

    def close(self):
        self.p.stdin.close()
        self.p.wait()


# ---------------------------------------------------------------- the run


class Failure(Exception):
    pass


# Relative weights of the operations (--mix changes any of them).
MIX = {
    "write": 30, "read": 25, "truncate": 8, "punch": 5, "zero": 4, "alloc": 3,
    "copy": 6, "mmap": 4, "seek": 5, "fsync": 2,
}


class Run:
    def __init__(self, path, other_mount, name, seed, nops, max_size, max_op, mix):
        self.mix = dict(MIX)
        for item in filter(None, mix.split(",")):
            k, w = item.split("=")
            if k not in self.mix:
                raise SystemExit(f"--mix: unknown operation {k}")
            self.mix[k] = int(w)
        self.mix_arg = mix
        self.path = path
        self.other_mount = other_mount
        self.name = name
        self.seed = seed
        self.rng = random.Random(seed)
        self.nops = nops
        self.max_size = max_size
        self.max_op = max_op
        self.m = Model()
        self.log = []
        self.holes_seen = False
        self.counts = {}
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.close(fd)
        self.reopen()
        self.other = Other(path)

    def reopen(self):
        if hasattr(self, "fds"):
            for fd in self.fds:
                os.close(fd)
        self.fds = [os.open(self.path, os.O_RDWR), os.open(self.path, os.O_RDWR)]

    def note(self, text):
        self.log.append(text)
        kind = text.split()[1]
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def fail(self, opno, what):
        tail = "\n".join(self.log[-25:])
        raise Failure(
            f"operation {opno}: {what}\nlast operations:\n{tail}\n"
            f"replay: fsx.py MOUNT --seed {self.seed} --ops {self.nops} "
            f"--max-size {self.max_size} --max-op {self.max_op} --mix '{self.mix_arg}'"
        )

    def check_read(self, opno, off, length, got, who):
        want = bytes(self.m.bytes[off : off + length])
        if got != want:
            for i, (a, b) in enumerate(zip(got, want)):
                if a != b:
                    self.fail(
                        opno,
                        f"{who}: read at {off:#x} differs first at {off + i:#x}: "
                        f"got {got[i:i+8].hex()} want {want[i:i+8].hex()} "
                        f"(size {self.m.size():#x})",
                    )
            self.fail(opno, f"{who}: read at {off:#x} got {len(got)} bytes, want {len(want)}")

    def compare_whole(self, opno, path, who):
        with open(path, "rb") as f:
            got = f.read()
        if got != bytes(self.m.bytes):
            self.check_read(opno, 0, len(got) + 1, got, who)
            self.fail(opno, f"{who}: whole file differs (size {len(got)} vs {self.m.size()})")

    def step(self, opno):
        rng, m = self.rng, self.m
        size = m.size()
        kinds = list(self.mix)
        kind = rng.choices(kinds, weights=[self.mix[k] for k in kinds])[0]
        who = rng.randrange(3)  # descriptor 0, descriptor 1, the other process
        length = rng.randrange(1, self.max_op + 1)
        off = rng.randrange(0, max(1, min(self.max_size - length, size + self.max_op)))
        fd = self.fds[who % 2]
        if kind == "write":
            buf = pattern(opno, off, length)
            self.note(f"{opno} write {off:#x} {length:#x} size {size:#x} by {who}")
            n = self.other.pwrite(buf, off) if who == 2 else os.pwrite(fd, buf, off)
            if n != length:
                self.fail(opno, f"short write {n}")
            m.write(off, buf)
        elif kind == "read":
            off = rng.randrange(0, max(1, size + 4096))
            self.note(f"{opno} read {off:#x} {length:#x} size {size:#x} by {who}")
            got = self.other.pread(length, off) if who == 2 else os.pread(fd, length, off)
            self.check_read(opno, off, length, got, f"read by {who}")
        elif kind == "truncate":
            new = rng.randrange(0, self.max_size)
            self.note(f"{opno} truncate {new:#x} from {size:#x} by {who}")
            if who == 2:
                self.other.ftruncate(new)
            else:
                os.ftruncate(fd, new)
            m.resize(new)
        elif kind in ("punch", "zero", "alloc"):
            if kind == "punch":
                mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
            elif kind == "zero":
                mode = FALLOC_FL_ZERO_RANGE | rng.choice([0, FALLOC_FL_KEEP_SIZE])
            else:
                mode = rng.choice([0, FALLOC_FL_KEEP_SIZE])
            self.note(f"{opno} {kind} {off:#x} {length:#x} mode {mode:#x} size {size:#x}")
            fallocate(fd, mode, off, length)
            if kind in ("punch", "zero"):
                m.hole(off, off + length)
            if not mode & FALLOC_FL_KEEP_SIZE and off + length > size:
                m.resize(off + length)
        elif kind == "copy":
            if size == 0:
                return
            src = rng.randrange(0, size)
            length = min(length, size - src)
            dst = rng.randrange(0, max(1, min(self.max_size - length, size + self.max_op)))
            if abs(src - dst) < length:
                return  # overlapping ranges in one file: EINVAL by design
            self.note(f"{opno} copy {src:#x} -> {dst:#x} {length:#x} size {size:#x}")
            done = 0
            while done < length:
                n = os.copy_file_range(fd, self.fds[1 - who % 2], length - done, src + done, dst + done)
                if n == 0:
                    break
                done += n
            if done != length:
                self.fail(opno, f"copy_file_range copied {done} of {length}")
            chunk = bytes(m.bytes[src : src + length])
            holes = bytes(m.data[src : src + length])
            m.write(dst, chunk)
            m.data[dst : dst + length] = holes
        elif kind == "mmap":
            if size == 0:
                return
            off = rng.randrange(0, size)
            length = min(length, size - off, 256 * 1024)
            page = mmap.ALLOCATIONGRANULARITY
            start = off - off % page
            self.note(f"{opno} mmap-write {off:#x} {length:#x} size {size:#x}")
            with mmap.mmap(fd, off + length - start, offset=start) as mp:
                buf = pattern(opno, off, length)
                mp[off - start : off - start + length] = buf
                mp.flush()
            m.write(off, buf)
            # Writeback sends whole pages: the zeros around the bytes
            # written become data too (within the size).
            first = off - off % 4096
            last = min(size, (off + length + 4095) // 4096 * 4096)
            m.data[first:last] = b"\x01" * (last - first)
        elif kind == "seek":
            if size == 0:
                return
            off = rng.randrange(0, size)
            self.note(f"{opno} seek {off:#x} size {size:#x}")
            try:
                d = os.lseek(fd, off, SEEK_DATA)
            except OSError as e:
                d = -e.errno
            h = os.lseek(fd, off, SEEK_HOLE)
            want_d = m.data.find(b"\x01", off)
            want_h = m.data.find(b"\x00", off)
            want_h = size if want_h < 0 else want_h
            if h < size:
                self.holes_seen = True
            # Where holes are reported, they must be exact.
            if self.holes_seen:
                if want_d < 0 and d != -6:  # ENXIO
                    self.fail(opno, f"SEEK_DATA from {off:#x} gave {d}, want ENXIO")
                if want_d >= 0 and d != want_d:
                    self.fail(opno, f"SEEK_DATA from {off:#x} gave {d:#x}, want {want_d:#x}")
                if h != want_h:
                    self.fail(opno, f"SEEK_HOLE from {off:#x} gave {h:#x}, want {want_h:#x}")
        elif kind == "fsync":
            self.note(f"{opno} fsync by {who}")
            if who == 2:
                self.other.fsync()
            else:
                os.fsync(fd)
        st = os.fstat(self.fds[0])
        if st.st_size != m.size():
            self.fail(opno, f"fstat size {st.st_size:#x}, model {m.size():#x}")

    def fill(self, size):
        """Starts from a file of `size` bytes of data (op 0)."""
        buf = pattern(0, 0, size)
        os.pwrite(self.fds[0], buf, 0)
        self.m.write(0, buf)

    def run(self):
        every = max(1, self.nops // 8)
        for opno in range(1, self.nops + 1):
            self.step(opno)
            if opno % every == 0:
                self.reopen()
                self.compare_whole(opno, self.path, "after reopen")
        self.other.close()
        for fd in self.fds:
            os.close(fd)
        self.compare_whole(self.nops, self.path, "after close")
        if self.other_mount:
            self.compare_whole(self.nops, os.path.join(self.other_mount, self.name), "second mount")
        counts = " ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        print(f"fsx: {self.nops} operations ok, final size {self.m.size()}: {counts}")


def replay(path, ops_file):
    """Replays a recorded sequence on one descriptor, checking every read."""
    m = Model()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    n = 0
    try:
        with open(ops_file) as f:
            for lineno, line in enumerate(f, 1):
                words = line.replace("*", "").split()
                if not words or words[0] == "skip":
                    continue
                nums = [int(w, 16) for w in words[1:]]
                n += 1
                if words[0] == "write":
                    off, length = nums[0], nums[1]
                    buf = pattern(lineno, off, length)
                    os.pwrite(fd, buf, off)
                    m.write(off, buf)
                elif words[0] == "read":
                    off, length = nums[0], nums[1]
                    got = os.pread(fd, length, off)
                    want = bytes(m.bytes[off : off + length])
                    if got != want:
                        i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                        raise Failure(
                            f"line {lineno}: read at {off:#x} differs at {off + i:#x} "
                            f"(got {len(got)} bytes, want {len(want)})"
                        )
                elif words[0] == "truncate":
                    os.ftruncate(fd, nums[1])
                    m.resize(nums[1])
                else:
                    raise Failure(f"line {lineno}: unknown operation {words[0]}")
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        if f.read() != bytes(m.bytes):
            raise Failure("whole file differs after close")
    print(f"replay: {n} operations ok, final size {m.size()}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(sys.argv[2])
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("mount")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--max-size", type=lambda s: int(s, 0), default=64 << 20)
    ap.add_argument("--max-op", type=lambda s: int(s, 0), default=1 << 20)
    ap.add_argument("--other", default=None)
    ap.add_argument("--name", default="fsx.bin")
    ap.add_argument("--replay", default=None)
    ap.add_argument("--mix", default="", help="weights, e.g. write=60,truncate=0")
    ap.add_argument("--fill", type=lambda s: int(s, 0), default=0, help="start with this many bytes")
    a = ap.parse_args()
    path = os.path.join(a.mount, a.name)
    try:
        if a.replay:
            replay(path, a.replay)
            return 0
        seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 32)
        print(f"fsx: seed {seed}", flush=True)
        run = Run(path, a.other, a.name, seed, a.ops, a.max_size, a.max_op, a.mix)
        if a.fill:
            run.fill(a.fill)
        run.run()
    except Failure as e:
        print(f"fsx: FAILED: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
