"""A small HTTP server on 127.0.0.1 for the generation stage's and the LLM judge's tests: a proxy in
front of a real OpenAI-compatible server (`transformers serve`, started by `transformers_serve`)
that can fail chosen requests (429 with Retry-After, 500) and counts what it forwarded; or, without
an upstream, a server that answers chat completions itself with fixed texts (the unit tests that
need no model).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class Loopback:
    """`fail(n)` -> None or an HTTP status for the n-th POST (1-based); `answer(body)` -> the text
    when there is no upstream. `posts`, `forwarded`, `failed` and `headers` record what came in."""

    def __init__(self, upstream: str | None = None, fail=None, answer=None):
        self.upstream = urlsplit(upstream) if upstream else None
        self.fail = fail or (lambda n: None)
        self.answer = answer or (lambda body: "Sure, here you go.")
        self.posts = self.forwarded = self.inflight = 0
        self.failed: list[int] = []
        self.headers: list[dict] = []
        self.bodies: list[dict] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, status: int, payload: bytes, headers: dict | None = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client is gone (a killed stage)

            def do_GET(self):
                self._send(200, b'{"status":"ok"}')

            def do_POST(self):
                with outer._lock:
                    outer.inflight += 1
                try:
                    self._post()
                finally:
                    with outer._lock:
                        outer.inflight -= 1

            def _post(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer._lock:
                    outer.posts += 1
                    n = outer.posts
                    outer.headers.append(dict(self.headers))
                    outer.bodies.append(json.loads(body))
                status = outer.fail(n)
                if status:
                    with outer._lock:
                        outer.failed.append(status)
                    extra = {"Retry-After": "0"} if status == 429 else {}
                    return self._send(status, json.dumps({"error": {"message": f"injected {status}"}}).encode(), extra)
                if outer.upstream is None:
                    text = outer.answer(json.loads(body))
                    reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
                    return self._send(200, json.dumps(reply).encode())
                conn = http.client.HTTPConnection(outer.upstream.hostname, outer.upstream.port, timeout=300)
                conn.request("POST", self.path, body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                payload = r.read()
                conn.close()
                with outer._lock:
                    outer.forwarded += 1
                self._send(r.status, payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Loopback:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def idle(self, timeout: float = 60.0) -> None:
        """Wait until no request is being served (e.g. those a killed client left in flight)."""
        import time

        deadline = time.time() + timeout
        while self.inflight and time.time() < deadline:
            time.sleep(0.05)
        assert not self.inflight, f"{self.inflight} requests still in flight after {timeout}s"

    def reset(self, fail=None) -> None:
        with self._lock:
            self.posts = self.forwarded = 0
            self.failed, self.headers, self.bodies = [], [], []
            self.fail = fail or (lambda n: None)


@contextlib.contextmanager
def transformers_serve(repo, env: dict, log):
    """`transformers serve` on a free port of 127.0.0.1 (it loads the model a request names by its
    path), until it answers /health; yields its base URL; stopped, with its children, at the end."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(repo / ".venv" / "bin" / "transformers"), "serve", "--host", "127.0.0.1", "--port", str(port),
             "--default-seed", "0"],
            cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"transformers serve did not come up on {url}:\n{open(log).read()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
