"""A local HTTP server on 127.0.0.1 that serves weight files, for the download tests.

Never the internet: the tests point `EFFICIENTNET_WEIGHTS_URL` at this server. Besides serving
files it can misbehave the ways a real download does: cut the body short of its Content-Length
(`truncate`) or send the headers and then nothing (`stall`).
"""

from __future__ import annotations

import http.server
import threading


class WeightsServer:
    """`with WeightsServer({"name.h5": b"..."}) as server:` serves at `server.url`.

    Attributes:
      files: {file name: bytes} served at `url/<file name>`.
      requests: the paths asked for, in order.
      truncate: serve only the first half of each body (its full length announced).
      stall: seconds to wait after the headers before sending anything.
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.requests: list[str] = []
        self.truncate = False
        self.stall = 0.0
        self._stop = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 -- http.server's name
                name = self.path.lstrip("/")
                server.requests.append(name)
                body = server.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.stall:
                    server._stop.wait(server.stall)
                    return
                self.wfile.write(body[: len(body) // 2] if server.truncate else body)

            def log_message(self, *args):  # no request lines on stderr
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> WeightsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving and close the port: later connections are refused."""
        self._stop.set()
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
