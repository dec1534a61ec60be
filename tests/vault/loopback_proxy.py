"""The part the test proxies share: a loopback TCP listener in front of a real server (OpenBao) that hands
each client connection, with a fresh connection to the upstream, to `_serve`. A FAKE at the transport: the
subclasses change what reaches the server or the client, nothing else."""

from __future__ import annotations

import socket
import threading


class LoopbackProxy:
    def __init__(self, upstream_port: int, path_suffix: bytes, *, backlog: int = 64) -> None:
        self.upstream_port = upstream_port
        self.path_suffix = path_suffix
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(backlog)
        self.port = self._sock.getsockname()[1]
        self.addr = f"http://127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._serve_and_close, args=(client, upstream), daemon=True).start()

    def _serve_and_close(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            self._serve(client, upstream)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def _matches(self, data: bytes) -> bool:
        """A POST/PUT whose request line's path ends in `path_suffix`."""
        parts = data.split(b"\r\n", 1)[0].split(b" ")
        return len(parts) >= 2 and parts[0] in (b"POST", b"PUT") and parts[1].endswith(self.path_suffix)

    def _serve(self, client: socket.socket, upstream: socket.socket) -> None:
        """Carry one client connection (both sockets are closed afterwards)."""
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True
        self._sock.close()
