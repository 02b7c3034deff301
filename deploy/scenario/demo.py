#!/usr/bin/env python3
"""The demo's traffic, run inside a namespace by demo.sh.

upload N MANIFEST        (client) upload N images through lb and fetch each
                         back through lb, byte-compared; append to MANIFEST
load SECONDS STOPFILE MANIFEST OUT
                         (client) uploads and fetches through lb without
                         pause until STOPFILE exists (or SECONDS pass);
                         writes counts and the longest request to OUT
check-web MANIFEST       (lb) fetch every image from every web server
                         directly, byte-compared

Images have random sizes between 50 KiB and 2 MiB; each is remembered by
name and blake3 hash (b3sum) in MANIFEST, one JSON object per line.
"""

import json
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

LB = "http://lb"


def blake3(data):
    out = subprocess.run(["b3sum", "--no-names"], input=data, capture_output=True, check=True)
    return out.stdout.decode().split()[0]


def image(rng):
    size = rng.randint(50 << 10, 2 << 20)
    return rng.randbytes(size)


def upload(name, data, timeout=30):
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(
        f"{LB}/upload",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status == 201 and r.read().decode().strip() == name, r.headers.get("X-Served-By")


def fetch(base, name, timeout=30):
    with urllib.request.urlopen(f"{base}/uploads/{name}", timeout=timeout) as r:
        return r.read(), r.headers.get("X-Served-By")


def one(rng, manifest, stats):
    """Uploads one image and fetches it back; records what happened."""
    name = f"img-{uuid.uuid4().hex[:12]}.jpg"
    data = image(rng)
    t0 = time.monotonic()
    try:
        ok, by_up = upload(name, data)
    except (urllib.error.URLError, OSError) as e:
        ok, by_up = False, str(e)
    t1 = time.monotonic()
    stats["uploads"] += 1
    stats["max_ms"] = max(stats["max_ms"], (t1 - t0) * 1000)
    if not ok:
        stats["failed"] += 1
        print(f"upload {name} failed: {by_up}", file=sys.stderr)
        return
    with open(manifest, "a") as f:
        f.write(json.dumps({"name": name, "size": len(data), "blake3": blake3(data)}) + "\n")
    try:
        back, by_get = fetch(LB, name)
        good = back == data
    except (urllib.error.URLError, OSError) as e:
        good, by_get = False, str(e)
    t2 = time.monotonic()
    stats["fetches"] += 1
    stats["max_ms"] = max(stats["max_ms"], (t2 - t1) * 1000)
    if not good:
        stats["failed"] += 1
        print(f"fetch {name} failed: {by_get}", file=sys.stderr)
    elif by_get != by_up:
        stats["other_server"] += 1


def new_stats():
    return {"uploads": 0, "fetches": 0, "failed": 0, "max_ms": 0.0, "other_server": 0}


def main():
    cmd = sys.argv[1]
    rng = random.Random()
    if cmd == "upload":
        n, manifest = int(sys.argv[2]), sys.argv[3]
        stats = new_stats()
        for _ in range(n):
            one(rng, manifest, stats)
        print(json.dumps(stats))
    elif cmd == "load":
        seconds, stop, manifest, out = float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
        stats = new_stats()
        end = time.monotonic() + seconds
        while time.monotonic() < end and not os.path.exists(stop):
            one(rng, manifest, stats)
        with open(out, "w") as f:
            json.dump(stats, f)
    elif cmd == "check-web":
        manifest = sys.argv[2]
        bad = 0
        entries = [json.loads(line) for line in open(manifest)]
        for web in ("s1", "s2", "s3"):
            for e in entries:
                try:
                    data, _ = fetch(f"http://{web}", e["name"])
                    ok = len(data) == e["size"] and blake3(data) == e["blake3"]
                except (urllib.error.URLError, OSError) as err:
                    ok = False
                    print(f"{web}: {e['name']}: {err}", file=sys.stderr)
                if not ok:
                    bad += 1
                    print(f"{web}: {e['name']} differs", file=sys.stderr)
        print(json.dumps({"checked": len(entries) * 3, "bad": bad}))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
