#!/usr/bin/env python3
"""The demo's web application: the part of a web site that takes image
uploads and shows them. It stores every upload in its uploads directory (a
quizfs mount, shared by all web servers) and serves them from there.

GET /              a form to upload an image and the list of images
POST /upload       multipart form with the field "image"; 201 and the name
GET /uploads/NAME  the image
GET /health        "ok" (the load balancer's health check)

Every response carries X-Served-By with this server's name.
"""

import argparse
import email.parser
import email.policy
import html
import os
import re
import secrets
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_UPLOAD = 8 << 20
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif"}


class Handler(BaseHTTPRequestHandler):
    server_version = "quizfs-demo/1"

    def log_message(self, fmt, *args):  # quiet: the demo prints its own summary
        pass

    def reply(self, code, body, ctype="text/plain; charset=utf-8"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Served-By", self.server.name)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, b"ok\n")
        if self.path == "/":
            names = sorted(os.listdir(self.server.dir))
            items = "".join(
                f'<li><a href="/uploads/{html.escape(n)}"><img src="/uploads/{html.escape(n)}" '
                f'height="64"> {html.escape(n)}</a></li>'
                for n in names
                if not n.startswith(".")
            )
            page = (
                "<!doctype html><title>uploads</title>"
                f"<h1>Uploads (served by {html.escape(self.server.name)})</h1>"
                '<form method="post" action="/upload" enctype="multipart/form-data">'
                '<input type="file" name="image" accept="image/*"> <button>Upload</button></form>'
                f"<ul>{items}</ul>"
            )
            return self.reply(200, page.encode(), "text/html; charset=utf-8")
        if self.path.startswith("/uploads/"):
            name = self.path[len("/uploads/"):]
            if not NAME_RE.match(name):
                return self.reply(400, b"bad name\n")
            try:
                with open(os.path.join(self.server.dir, name), "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                return self.reply(404, b"no such image\n")
            ctype = TYPES.get(os.path.splitext(name)[1].lower(), "application/octet-stream")
            return self.reply(200, data, ctype)
        return self.reply(404, b"not found\n")

    def do_POST(self):
        if self.path != "/upload":
            return self.reply(404, b"not found\n")
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_UPLOAD:
            return self.reply(413, b"too large or empty\n")
        body = self.rfile.read(length)
        ctype = self.headers.get("Content-Type", "")
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body
        )
        if not msg.is_multipart():
            return self.reply(400, b"expected multipart/form-data\n")
        for part in msg.iter_parts():
            if part.get_param("name", header="content-disposition") != "image":
                continue
            data = part.get_payload(decode=True) or b""
            name = os.path.basename(part.get_filename() or "")
            if not NAME_RE.match(name):
                name = secrets.token_hex(8) + ".jpg"
            # Written under a temporary name and renamed, as PHP's
            # move_uploaded_file does: readers never see half an image.
            tmp = os.path.join(self.server.dir, f".{name}.{secrets.token_hex(4)}")
            with open(tmp, "wb") as f:
                f.write(data)
            os.rename(tmp, os.path.join(self.server.dir, name))
            return self.reply(201, (name + "\n").encode())
        return self.reply(400, b"no image field\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True, help="the uploads directory")
    p.add_argument("--name", required=True, help="this web server's name")
    p.add_argument("--port", type=int, default=80)
    a = p.parse_args()
    srv = ThreadingHTTPServer(("0.0.0.0", a.port), Handler)
    srv.dir, srv.name = a.dir, a.name
    srv.serve_forever()


if __name__ == "__main__":
    main()
