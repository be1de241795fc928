"""A static file server on 127.0.0.1 with the failures a real download meets, for the release-download tests.

``files`` maps URL paths to bytes. ``mode`` picks the behaviour of every GET: ``"ok"``; ``"tamper"`` (one byte
changed, same length); ``"truncate"`` (announces the full length, sends half, closes the connection);
``"missing"`` (404); ``"hang"`` (accepts the connection and never answers, until the server stops). Requests
are logged.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class FileServer:
    def __init__(self, files: dict[str, bytes] | None = None):
        self.files: dict[str, bytes] = dict(files or {})
        self.mode = "ok"
        self.requests: list[str] = []
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = unquote(urlparse(self.path).path)
                server.requests.append(path)
                if server.mode == "hang":
                    server._stop.wait(30)
                    return
                data = server.files.get(path)
                if data is None or server.mode == "missing":
                    body = b"404: Not Found"
                    self.send_response(404)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if server.mode == "tamper":
                    data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if server.mode == "truncate":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
