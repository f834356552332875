#!/usr/bin/env python3
"""Failure-injection HTTP(S) servers for the Git transport tests (tests/git_transport.rs,
tests/git_timeout.rs). Binds 127.0.0.1 on a free port and prints `PORT <n>` once it listens.
Every request is logged to --log as one line: `<method> <path> auth=<yes|no>`.

  record    answers 401 (Basic challenge) to everything: shows whether credentials arrive
  redirect  answers 401 until a request carries credentials, then redirects to --to + the path
  trickle   serves the repositories under --root through git's own `git http-backend` (no
            auth), writing each response --chunk bytes at a time, --delay seconds apart

  git_fault.py MODE --log FILE [--cert CRT --key KEY] [--to URL] [--root DIR]
               [--chunk N] [--delay S]
"""
import argparse
import http.server
import os
import ssl
import subprocess
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["record", "redirect", "trickle"])
    ap.add_argument("--log", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--to")
    ap.add_argument("--root")
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--delay", type=float, default=0.2)
    args = ap.parse_args()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.handle_any()

        def do_POST(self):
            self.handle_any()

        def handle_any(self):
            has_auth = "Authorization" in self.headers
            with open(args.log, "a") as f:
                f.write("%s %s auth=%s\n" % (self.command, self.path, "yes" if has_auth else "no"))
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length) if length else b""
            if args.mode == "record" or (args.mode == "redirect" and not has_auth):
                self.reply(401, [("WWW-Authenticate", 'Basic realm="git"')], b"authentication required\n")
            elif args.mode == "redirect":
                self.reply(302, [("Location", args.to + self.path)], b"")
            else:
                self.backend(data)

        def reply(self, status, headers, body, chunk=None):
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if chunk is None:
                self.wfile.write(body)
                return
            for i in range(0, len(body), chunk):
                self.wfile.write(body[i:i + chunk])
                self.wfile.flush()
                time.sleep(args.delay)

        def backend(self, data):
            path, _, query = self.path.partition("?")
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "GIT_PROJECT_ROOT": args.root,
                "GIT_HTTP_EXPORT_ALL": "1",
                "REQUEST_METHOD": self.command,
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(data)),
                "REMOTE_ADDR": self.client_address[0],
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            }
            out = subprocess.run(["git", "http-backend"], input=data, env=env, capture_output=True)
            head, _, body = out.stdout.partition(b"\r\n\r\n")
            status, headers = 200, []
            for line in head.split(b"\r\n"):
                if not line:
                    continue
                name, _, value = line.decode().partition(":")
                if name.lower() == "status":
                    status = int(value.strip().split()[0])
                else:
                    headers.append((name, value.strip()))
            # The pack (the POST's answer) trickles; the ref list comes at once.
            self.reply(status, headers, body, args.chunk if self.command == "POST" else None)

        def log_message(self, fmt, *a):
            sys.stderr.write("%s %s\n" % (self.address_string(), fmt % a))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if args.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("PORT %d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
