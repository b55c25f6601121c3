"""Running the app under uvicorn: in the foreground (`ctxlm serve`), or on a background thread (tests, benchmarks,
the README's screenshot)."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import uvicorn

from ctxlm.errors import UserError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), port 0 for a free one; a port in use is a user error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror or err}): pick another --port "
                        "(or --host)") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def run(app, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Serve `app` until Ctrl-C."""
    sock = bind(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
    server.run(sockets=[sock])


class BackgroundServer:
    """`with BackgroundServer(app) as url:` serves `app` on 127.0.0.1 (a free port unless given) from a thread,
    and stops it on leaving the block."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning") -> None:
        self.sock = bind(host, port)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=2))
        self.server.install_signal_handlers = lambda: None  # not the main thread  # type: ignore[method-assign]
        host, port = self.sock.getsockname()[:2]
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="ctxlm-serve")

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
