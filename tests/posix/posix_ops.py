#!/usr/bin/env python3
"""POSIX operations on a quizfs mount, with their error cases.

Usage: posix_ops.py MOUNT_A MOUNT_B

MOUNT_A and MOUNT_B are two mounts of the same volume (two web servers).
Every check compares with what Linux promises; the first failure raises,
and the script exits non-zero with the failing check's name.
"""

import ctypes
import errno
import os
import stat
import sys
import time

A, B = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
CHUNK = 4 << 20
checks = 0


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        raise AssertionError(what)


def fails(errno_want, fn, *args, what=""):
    try:
        fn(*args)
    except OSError as e:
        check(e.errno == errno_want,
              f"{what or fn.__name__}: errno {errno.errorcode.get(e.errno)} "
              f"instead of {errno.errorcode[errno_want]}")
        return
    raise AssertionError(f"{what or fn.__name__}: succeeded, expected "
                         f"{errno.errorcode[errno_want]}")


def pattern(seed, n):
    return (bytes([(seed * 31 + i * 7) % 251 for i in range(251)]) * (n // 251 + 1))[:n]


def read(p):
    with open(p, "rb") as f:
        return f.read()


def write(p, data, mode="wb"):
    with open(p, mode) as f:
        f.write(data)


def renameat2(old, new, flags):
    AT_FDCWD = -100
    r = libc.renameat2(AT_FDCWD, old.encode(), AT_FDCWD, new.encode(), flags)
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


def utimensat(path, atime, mtime):
    """atime/mtime: (sec, nsec), or UTIME_NOW / UTIME_OMIT."""
    def ts(t):
        return Timespec(0, t) if isinstance(t, int) else Timespec(*t)
    times = (Timespec * 2)(ts(atime), ts(mtime))
    if libc.utimensat(-100, path.encode(), times, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def as_user(uid, gid, fn):
    """Runs fn() in a child with the given ids; returns its exit code."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            fn()
            os._exit(0)
        except AssertionError as e:
            print(f"as uid {uid}: {e}", flush=True)
            os._exit(1)
        except BaseException as e:  # noqa: BLE001 - report anything
            print(f"as uid {uid}: unexpected {e!r}", flush=True)
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def main():
    root = os.path.join(A, "posix")
    broot = os.path.join(B, "posix")
    os.mkdir(root)
    os.chmod(root, 0o777)
    p = lambda *n: os.path.join(root, *n)  # noqa: E731
    q = lambda *n: os.path.join(broot, *n)  # noqa: E731

    # lookup / getattr
    fails(errno.ENOENT, os.stat, p("missing"))
    fails(errno.ENOENT, os.stat, p("missing", "x"))

    # mkdir / rmdir
    os.mkdir(p("d"), 0o750)
    st = os.stat(p("d"))
    check(stat.S_ISDIR(st.st_mode) and st.st_mode & 0o777 == 0o750, "mkdir mode")
    check(st.st_nlink == 2, "new dir nlink 2")
    check(os.stat(root).st_nlink == 3, "parent nlink counts subdirs")
    fails(errno.EEXIST, os.mkdir, p("d"))
    write(p("d", "f"), b"x")
    fails(errno.ENOTEMPTY, os.rmdir, p("d"))
    fails(errno.ENOTDIR, os.rmdir, p("d", "f"))
    fails(errno.ENOTDIR, os.mkdir, p("d", "f", "sub"))
    fails(errno.EISDIR, os.unlink, p("d"))
    os.unlink(p("d", "f"))
    os.rmdir(p("d"))
    fails(errno.ENOENT, os.rmdir, p("d"))
    check(os.stat(root).st_nlink == 2, "parent nlink after rmdir")

    # names
    fails(errno.ENAMETOOLONG, os.mkdir, p("n" * 256))
    os.mkdir(p("n" * 255))
    os.rmdir(p("n" * 255))

    # create with O_EXCL, O_TRUNC, O_APPEND
    fd = os.open(p("c"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.write(fd, b"hello world")
    os.close(fd)
    check(os.stat(p("c")).st_mode & 0o777 == 0o640, "create mode")
    fails(errno.EEXIST, os.open, p("c"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    fd = os.open(p("c"), os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    check(os.stat(p("c")).st_size == 0 and read(q("c")) == b"", "O_TRUNC empties")
    write(p("c"), b"ab")
    write(p("c"), b"cd", "ab")
    fd = os.open(p("c"), os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"ef")
    os.close(fd)
    check(read(q("c")) == b"abcdef", "O_APPEND appends")
    fails(errno.EISDIR, os.open, root, os.O_WRONLY)

    # writes at any offset: overwrite inside a multi-chunk file
    big = bytearray(pattern(1, 3 * CHUNK + 12345))
    write(p("big"), big)
    with open(p("big"), "r+b") as f:
        for off in (0, CHUNK - 5, 2 * CHUNK + 100, len(big) - 3):
            f.seek(off)
            f.write(b"XYZXYZXYZX")
            big[off:off + 10] = b"XYZXYZXYZX"
    check(read(q("big")) == bytes(big), "overwrite inside a multi-chunk file")

    # sparse files: holes read as zeros
    with open(p("sparse"), "wb") as f:
        f.seek(2 * CHUNK + 7)
        f.write(b"tail")
        f.seek(10)
        f.write(b"head")
    data = read(q("sparse"))
    want = bytearray(2 * CHUNK + 11)
    want[10:14] = b"head"
    want[2 * CHUNK + 7:] = b"tail"
    check(data == bytes(want), "sparse file reads zeros in holes")
    os.truncate(p("sparse"), 5 * CHUNK)
    check(read(q("sparse"))[2 * CHUNK + 11:] == bytes(3 * CHUNK - 11), "extended hole")

    # truncate down and up (setattr size), through a path and a descriptor
    os.truncate(p("big"), CHUNK + 3)
    os.truncate(p("big"), CHUNK + 1000)
    check(read(q("big")) == bytes(big[:CHUNK + 3]) + bytes(997), "truncate down then up")
    with open(p("big"), "r+b") as f:
        f.truncate(10)
        f.seek(20)
        f.write(b"!")
    check(read(q("big")) == bytes(big[:10]) + bytes(10) + b"!", "ftruncate then write")
    fails(errno.EISDIR, os.truncate, root, 0)

    # chmod, chown, ctime, utimens with UTIME_NOW / UTIME_OMIT, nanoseconds
    write(p("t"), b"t")
    c0 = os.stat(p("t")).st_ctime_ns
    time.sleep(0.01)
    os.chmod(p("t"), 0o604)
    st = os.stat(p("t"))
    check(st.st_mode & 0o7777 == 0o604 and st.st_ctime_ns > c0, "chmod sets mode and ctime")
    os.chown(p("t"), 1234, 5678)
    st = os.stat(p("t"))
    check((st.st_uid, st.st_gid) == (1234, 5678), "chown")
    utimensat(p("t"), (1000, 123456789), (2000, 987654321))
    st = os.stat(q("t"))
    check(st.st_atime_ns == 1000_123456789 and st.st_mtime_ns == 2000_987654321,
          f"utimens nanoseconds: {st.st_atime_ns} {st.st_mtime_ns}")
    utimensat(p("t"), UTIME_OMIT, (3000, 5))
    st = os.stat(p("t"))
    check(st.st_atime_ns == 1000_123456789 and st.st_mtime_ns == 3000_000000005,
          "UTIME_OMIT keeps atime")
    before = time.time_ns()
    utimensat(p("t"), UTIME_NOW, UTIME_OMIT)
    st = os.stat(p("t"))
    check(abs(st.st_atime_ns - before) < 5_000_000_000 and st.st_mtime_ns == 3000_000000005,
          "UTIME_NOW sets atime to now, mtime kept")
    m0 = os.stat(p("c")).st_mtime_ns
    time.sleep(0.01)
    write(p("c"), b"new", "ab")
    check(os.stat(q("c")).st_mtime_ns > m0, "write moves mtime")

    # link, nlink, symlink, readlink
    os.link(p("c"), p("c2"))
    check(os.stat(p("c")).st_nlink == 2 and os.stat(p("c")).st_ino == os.stat(p("c2")).st_ino,
          "hard link shares the inode")
    fails(errno.EEXIST, os.link, p("c"), p("c2"))
    fails(errno.EPERM, os.link, root, p("dirlink"))
    os.unlink(p("c2"))
    check(os.stat(p("c")).st_nlink == 1, "nlink after unlink")
    os.symlink("c", p("sl"))
    check(os.readlink(q("sl")) == "c" and read(q("sl")) == read(p("c")), "symlink")
    check(stat.S_ISLNK(os.lstat(p("sl")).st_mode), "lstat of a symlink")
    fails(errno.EEXIST, os.symlink, "x", p("sl"))
    fails(errno.EINVAL, os.readlink, p("c"))

    # mknod: FIFO works as a pipe
    os.mkfifo(p("fifo"), 0o600)
    check(stat.S_ISFIFO(os.stat(q("fifo")).st_mode), "mkfifo")
    rfd = os.open(p("fifo"), os.O_RDONLY | os.O_NONBLOCK)
    wfd = os.open(p("fifo"), os.O_WRONLY)
    os.write(wfd, b"through the pipe")
    check(os.read(rfd, 100) == b"through the pipe", "FIFO carries data")
    os.close(wfd)
    os.close(rfd)

    # rename: over a file, NOREPLACE, EXCHANGE, directories
    write(p("r1"), b"one")
    write(p("r2"), b"two")
    os.rename(p("r1"), p("r2"))
    check(read(q("r2")) == b"one" and not os.path.exists(p("r1")), "rename over a file")
    write(p("r1"), b"uno")
    fails(errno.EEXIST, renameat2, p("r1"), p("r2"), 1, what="RENAME_NOREPLACE")
    renameat2(p("r1"), p("r2"), 2)
    check(read(p("r1")) == b"one" and read(p("r2")) == b"uno", "RENAME_EXCHANGE")
    os.makedirs(p("da", "inner"))
    os.mkdir(p("db"))
    os.rename(p("da"), p("db", "moved"))
    check(os.path.isdir(p("db", "moved", "inner")), "rename a directory")
    check(os.stat(p("db")).st_nlink == 3, "nlink of the new parent")
    fails(errno.EINVAL, os.rename, p("db"), p("db", "moved", "x"))
    write(p("db", "moved", "inner", "f"), b"f")
    os.mkdir(p("empty"))
    fails(errno.ENOTEMPTY, os.rename, p("empty"), p("db", "moved"))
    fails(errno.EISDIR, os.rename, p("r1"), p("empty"))
    fails(errno.ENOTDIR, os.rename, p("empty"), p("r1"))
    os.rename(p("db"), p("empty"))  # over an empty directory
    check(os.path.isfile(p("empty", "moved", "inner", "f")), "rename over an empty dir")

    # unlink while open: the descriptor still reads (and writes) until close
    write(p("open"), pattern(2, CHUNK + 100))
    fd = os.open(p("open"), os.O_RDWR)
    os.unlink(p("open"))
    fails(errno.ENOENT, os.stat, p("open"))
    check(os.pread(fd, 50, CHUNK) == pattern(2, CHUNK + 100)[CHUNK:CHUNK + 50],
          "an unlinked open file stays readable")
    os.pwrite(fd, b"still", 0)
    os.fsync(fd)
    check(os.pread(fd, 5, 0) == b"still", "and writable")
    check(os.fstat(fd).st_nlink == 0, "with no links")
    os.close(fd)
    # rename over an open file: the old content stays readable through it
    write(p("victim"), b"old content")
    write(p("newer"), b"new content")
    fd = os.open(p("victim"), os.O_RDONLY)
    os.rename(p("newer"), p("victim"))
    check(os.pread(fd, 100, 0) == b"old content", "replaced open file stays readable")
    os.close(fd)
    check(read(q("victim")) == b"new content", "the name has the new file")

    # statfs: the cluster's space
    sv = os.statvfs(A)
    check(sv.f_blocks > 0 and 0 < sv.f_bavail <= sv.f_blocks and sv.f_namemax == 255,
          f"statfs {sv}")

    # extended attributes
    os.setxattr(p("c"), "user.colour", b"blue")
    check(os.getxattr(q("c"), "user.colour") == b"blue", "getxattr")
    fails(errno.EEXIST, os.setxattr, p("c"), "user.colour", b"red", os.XATTR_CREATE)
    fails(errno.ENODATA, os.setxattr, p("c"), "user.size", b"1", os.XATTR_REPLACE)
    os.setxattr(p("c"), "user.colour", b"red", os.XATTR_REPLACE)
    os.setxattr(p("c"), "user.empty", b"")
    check(sorted(os.listxattr(p("c"))) == ["user.colour", "user.empty"], "listxattr")
    check(os.getxattr(p("c"), "user.empty") == b"", "empty value")
    os.removexattr(p("c"), "user.colour")
    fails(errno.ENODATA, os.getxattr, p("c"), "user.colour")
    fails(errno.ENODATA, os.removexattr, p("c"), "user.colour")

    # fsync and flush on a file and a directory
    fd = os.open(p("c"), os.O_RDWR)
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)
    dfd = os.open(root, os.O_RDONLY)
    os.fsync(dfd)
    os.close(dfd)

    # permissions, sticky and setgid directories, access()
    write(p("private"), b"secret")
    os.chmod(p("private"), 0o600)
    write(p("public"), b"open")
    os.chmod(p("public"), 0o644)
    os.mkdir(p("sticky"))
    os.chmod(p("sticky"), 0o1777)
    write(p("sticky", "roots"), b"r")
    os.chmod(p("sticky", "roots"), 0o666)
    os.mkdir(p("sgid"))
    os.chown(p("sgid"), 0, 4321)
    os.chmod(p("sgid"), 0o2777)

    def as_nobody():
        fails(errno.EACCES, open, p("private"), "rb")
        check(not os.access(p("private"), os.R_OK), "access() says no")
        check(os.access(p("public"), os.R_OK), "access() says yes")
        fails(errno.EACCES, open, p("public"), "ab")
        fails(errno.EPERM, os.unlink, p("sticky", "roots"), what="sticky unlink")
        fails(errno.EPERM, os.chmod, p("c"), 0o777, what="chmod by non-owner")
        write(p("sticky", "mine"), b"m")
        os.unlink(p("sticky", "mine"))
        write(p("sgid", "f"), b"g")
        os.mkdir(p("sgid", "sub"))
    check(as_user(65534, 65534, as_nobody) == 0, "checks as nobody")
    check(os.stat(p("sgid", "f")).st_gid == 4321, "setgid dir: file takes its group")
    st = os.stat(p("sgid", "sub"))
    check(st.st_gid == 4321 and st.st_mode & stat.S_ISGID, "setgid dir: subdir inherits")
    check(os.stat(p("sgid", "f")).st_uid == 65534, "file owned by its creator")

    # readdir: every name once, with . and ..
    os.mkdir(p("list"))
    names = {f"n{i:04}" for i in range(1500)}
    for n in names:
        write(p("list", n), b"")
    listed = os.listdir(q("list"))
    check(len(listed) == len(names) and set(listed) == names, "readdir lists every name once")
    with os.scandir(p("list")) as it:
        check(sum(1 for e in it if e.is_file()) == 1500, "scandir types")

    print(f"posix_ops: {checks} checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}")
        sys.exit(1)
