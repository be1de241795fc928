"""A minimal Hugging Face Hub-compatible file server on 127.0.0.1 for tests.

Downloads: serves ``ROOT/<owner>/<name>/<file>`` at ``/<owner>/<name>/resolve/<revision>/<file>`` with the
headers ``huggingface_hub`` needs (``ETag``, ``X-Repo-Commit``, ``Content-Length``); a missing repo or file is a
404 with ``X-Error-Code: RepoNotFound`` / ``EntryNotFound``.

Uploads (``HfApi.create_repo`` / ``upload_folder``): ``POST /api/repos/create``, ``/api/models/<repo>/preupload/
<rev>`` (every file "regular", i.e. inlined in the commit: no LFS) and ``/api/models/<repo>/commit/<rev>``
(NDJSON, base64 file contents), written under ROOT.

Requests are logged, so tests can check cache hits.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


def _commit_of(repo: Path) -> str:
    h = hashlib.sha1()
    for f in sorted(p for p in repo.rglob("*") if p.is_file()):
        h.update(f.relative_to(repo).as_posix().encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


class HubServer:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.requests: list[tuple[str, str]] = []
        self.down = False  # answer every request with 503, like an unreachable Hub
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _resolve(self, send_body: bool):
                path = unquote(urlparse(self.path).path)
                server.requests.append((self.command, path))
                if server.down:
                    return self._error(503, "ServiceUnavailable", "down for the test")
                parts = path.strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._error(404, "EntryNotFound", "not a resolve URL")
                owner, name, _, revision = parts[:4]
                filename = "/".join(parts[4:])
                repo = server.root / owner / name
                if not repo.is_dir():
                    return self._error(404, "RepoNotFound", f"Repository {owner}/{name} not found")
                commit = _commit_of(repo)
                if revision not in ("main", commit):
                    return self._error(404, "RevisionNotFound", f"Revision {revision} not found")
                f = repo / filename
                if not f.is_file():
                    return self._error(404, "EntryNotFound", f"{filename} not found")
                data = f.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("X-Repo-Commit", commit)
                self.end_headers()
                if send_body:
                    self.wfile.write(data)

            def _error(self, code: int, error_code: str, message: str):
                body = json.dumps({"error": message}).encode()
                self.send_response(code)
                self.send_header("X-Error-Code", error_code)
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, code: int, payload: dict):
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                path = unquote(urlparse(self.path).path)
                server.requests.append(("POST", path))
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if server.down:
                    return self._error(503, "ServiceUnavailable", "down for the test")
                parts = path.strip("/").split("/")
                if path == "/api/validate-yaml":  # a model card's metadata block must be valid YAML
                    import yaml

                    content = json.loads(body)["content"]
                    try:
                        meta = content.split("---")[1] if content.startswith("---") else ""
                        yaml.safe_load(meta)
                    except yaml.YAMLError as e:
                        return self._error(400, "BadRequest", f"invalid YAML metadata: {e}")
                    return self._json(200, {"errors": [], "warnings": []})
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo_id = f"{req.get('organization') or 'user'}/{req['name']}"
                    (server.root / repo_id).mkdir(parents=True, exist_ok=True)
                    return self._json(200, {"url": f"{server.url}/{repo_id}", "name": repo_id})
                if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] in ("preupload", "commit"):
                    repo_id = f"{parts[2]}/{parts[3]}"
                    repo = server.root / repo_id
                    if not repo.is_dir():
                        return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
                    if parts[4] == "preupload":
                        files = json.loads(body)["files"]
                        modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                        return self._json(200, {"files": modes})
                    for line in body.splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            target = repo / item["value"]["path"]
                            target.parent.mkdir(parents=True, exist_ok=True)
                            target.write_bytes(base64.b64decode(item["value"]["content"]))
                        elif item["key"] != "header":
                            return self._error(400, "BadRequest", f"unsupported commit operation {item['key']}")
                    commit = _commit_of(repo)
                    url = f"{server.url}/{repo_id}/commit/{commit}"
                    return self._json(200, {"commitUrl": url, "commitOid": commit, "pullRequestUrl": None})
                return self._error(404, "EntryNotFound", f"unsupported POST {path}")

            def do_HEAD(self):
                self._resolve(send_body=False)

            def do_GET(self):
                self._resolve(send_body=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
