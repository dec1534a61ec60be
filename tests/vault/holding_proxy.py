"""A loopback TCP proxy in front of a real OpenBao that holds chosen requests until the test releases them.

It forwards every byte both ways. Requests whose request line is a POST/PUT ending in `path_suffix` are
counted; once `hold_after` of them have passed (`hold_after=0`: from the first), each further one waits
before reaching OpenBao until `release()`. `held` is set when one is waiting: the test knows, without
sleeping, that the server using this proxy is stuck inside that request. This is how a test keeps a tool
call (or a rotation batch) in flight in another process for as long as it needs."""

from __future__ import annotations

import socket
import threading


class HoldingProxy:
    def __init__(self, upstream_port: int, path_suffix: bytes, hold_after: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.path_suffix = path_suffix
        self.hold_after = hold_after
        self.passed = 0
        self.held = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.addr = f"http://127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self, after: int = 0) -> None:
        """Hold matching requests once `after` more of them have passed."""
        with self._lock:
            self._released.clear()
            self.held.clear()
            self.hold_after = self.passed + after

    def release(self) -> None:
        """Let every held request (and every later one) through."""
        with self._lock:
            self.hold_after = None
            self._released.set()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _matches(self, data: bytes) -> bool:
        parts = data.split(b"\r\n", 1)[0].split(b" ")
        return len(parts) >= 2 and parts[0] in (b"POST", b"PUT") and parts[1].endswith(self.path_suffix)

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            client.close()
            return

        def pump_back() -> None:
            try:
                while data := upstream.recv(65536):
                    client.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    client.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        threading.Thread(target=pump_back, daemon=True).start()
        try:
            while data := client.recv(65536):
                if self._matches(data):
                    with self._lock:
                        wait = self.hold_after is not None and self.passed >= self.hold_after
                        if not wait:
                            self.passed += 1
                    if wait:
                        self.held.set()
                        self._released.wait()
                        with self._lock:
                            self.passed += 1
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.release()
        self._closed = True
        self._sock.close()
