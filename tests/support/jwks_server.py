"""A JWKS endpoint on loopback whose keys, delay, status and redirects a test controls (a real HTTP server)."""

from __future__ import annotations

import http.server
import json
import threading
import time


class JWKSServer:
    """A JWKS endpoint whose keys, delay and availability the test controls; counts its requests."""

    def __init__(self):
        self.keys = []
        self.redirect = None
        self.delay = 0.0
        self.status = 200
        self.requests = 0
        self.trickle = 0.0       # > 0: the whole answer (status line, headers, body) a byte every `trickle` s
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.requests += 1
                time.sleep(server.delay)
                if server.redirect and self.path != "/moved":
                    self.send_response(302)
                    self.send_header("Location", server.redirect.replace("{n}", str(server.requests)))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"keys": server.keys}).encode()
                if server.trickle:
                    answer = (f"HTTP/1.1 {server.status} OK\r\nContent-Type: application/json\r\n"
                              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
                    try:
                        for i in range(len(answer)):
                            self.wfile.write(answer[i:i + 1])
                            self.wfile.flush()
                            time.sleep(server.trickle)
                    except OSError:  # the client gave up
                        pass
                    self.close_connection = True
                    return
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        if self.thread is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread = None
