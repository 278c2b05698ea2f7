"""A Hugging Face hub on 127.0.0.1, just big enough for the real huggingface_hub client.

It answers the calls the client makes to list and download a model repo's files:
``GET /api/models/{repo}/tree/{rev}`` (file listing), ``GET /api/models/{repo}[/revision/{rev}]``
(repo info, for older clients) and ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` (with
``X-Repo-Commit``, ``ETag`` and ``Content-Length``, as the hub sends them). Every request is
recorded with its headers.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hub._answer(self, body=True)

            def do_HEAD(self):
                hub._answer(self, body=False)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def paths(self, method: str | None = None) -> list[str]:
        return [path for m, path, _ in self.requests if method in (None, m)]

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        self.requests.append((handler.command, handler.path, dict(handler.headers)))
        path = unquote(urlsplit(handler.path).path)
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/[^/]+/?", path):
            files = self._repo(handler, m[1], body)
            if files is not None:
                listing = [{"type": "file", "path": name, "size": len(data), "oid": _git_oid(data)}
                           for name, data in files.items()]
                self._send(handler, 200, json.dumps(listing).encode(), body, {"Content-Type": "application/json"})
        elif m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?/?", path):
            files = self._repo(handler, m[1], body)
            if files is not None:
                info = {"id": m[1], "sha": COMMIT, "siblings": [{"rfilename": name} for name in files]}
                self._send(handler, 200, json.dumps(info).encode(), body, {"Content-Type": "application/json"})
        elif m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path):
            files = self._repo(handler, m[1], body)
            if files is None:
                return
            if m[2] not in files:
                self._send(handler, 404, b"Entry not found", body, {"X-Error-Code": "EntryNotFound"})
                return
            data = files[m[2]]
            self._send(handler, 200, data, body, {
                "X-Repo-Commit": COMMIT,
                "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                "Content-Type": "application/octet-stream",
            })
        else:
            self._send(handler, 404, b"Not found", body, {})

    def _repo(self, handler, repo_id: str, body: bool) -> dict[str, bytes] | None:
        files = self.repos.get(repo_id)
        if files is None:
            self._send(handler, 404, b'{"error":"Repository not found"}', body, {"X-Error-Code": "RepoNotFound"})
        return files

    @staticmethod
    def _send(handler, status: int, data: bytes, body: bool, headers: dict[str, str]) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
