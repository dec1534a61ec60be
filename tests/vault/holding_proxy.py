"""A loopback TCP proxy in front of a real OpenBao that holds chosen requests until the test releases them.

It forwards every byte both ways. Requests whose request line is a POST/PUT ending in `path_suffix` are
counted; once `hold_after` of them have passed (`hold_after=0`: from the first), each further one waits
before reaching OpenBao until `release()`. `held` is set when one is waiting: the test knows, without
sleeping, that the server using this proxy is stuck inside that request. This is how a test keeps a tool
call (or a rotation batch) in flight in another process for as long as it needs."""

from __future__ import annotations

import socket
import threading

from tests.vault.loopback_proxy import LoopbackProxy


class HoldingProxy(LoopbackProxy):
    def __init__(self, upstream_port: int, path_suffix: bytes, hold_after: int | None = None) -> None:
        self.hold_after = hold_after
        self.passed = 0
        self.held = threading.Event()
        self._released = threading.Event()
        super().__init__(upstream_port, path_suffix)

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

    def _serve(self, client: socket.socket, upstream: socket.socket) -> None:
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

    def close(self) -> None:
        self.release()
        super().close()
