"""A small REAL HTTP server playing the Kubernetes API server's batch/v1 Jobs endpoints."""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

JOBS = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?(/status)?$")


class FakeKubeAPI:
    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, authorization
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _not_found(self, name: str) -> None:
                self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                 "message": f'jobs.batch "{name}" not found', "code": 404})

            def _route(self, method: str) -> None:
                api.requests.append((method, self.path, self.headers.get("Authorization")))
                m = JOBS.match(self.path.split("?")[0])
                if not m:
                    return self._send(404, {"kind": "Status", "code": 404, "message": "no such path"})
                ns, name, _status = m.groups()
                if method == "POST" and name is None:
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                    key = (ns, body["metadata"]["name"])
                    if key in api.jobs:
                        return self._send(409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"})
                    body["metadata"].update(uid=f"uid-{len(api.jobs)}", creationTimestamp="2026-11-25T10:00:00Z")
                    body["status"] = {}
                    api.jobs[key] = body
                    return self._send(201, body)
                if (ns, name) not in api.jobs:
                    return self._not_found(name or "")
                if method == "GET":
                    return self._send(200, api.jobs[(ns, name)])
                if method == "DELETE":
                    del api.jobs[(ns, name)]
                    return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
                return self._send(405, {"kind": "Status", "code": 405})

            def do_POST(self) -> None:
                self._route("POST")

            def do_GET(self) -> None:
                self._route("GET")

            def do_DELETE(self) -> None:
                self._route("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeKubeAPI":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
