"""A FAKE at the transport: a loopback TCP proxy in front of a real OpenBao that loses answers.

It forwards every byte both ways, except that for the first `drop` requests whose request line matches
`path_suffix`, it lets the request reach OpenBao, waits for OpenBao's answer to begin (so the request was
processed), and then closes the client's connection without passing the answer on — the client sees a
connection error for a request that took effect. Nothing else can produce that reliably."""

from __future__ import annotations

import socket
import threading

from tests.vault.loopback_proxy import LoopbackProxy


class AnswerLosingProxy(LoopbackProxy):
    def __init__(self, upstream_port: int, path_suffix: bytes, drop: int = 1) -> None:
        self.drop = drop
        self.dropped = 0
        self.forwarded_matching = 0
        super().__init__(upstream_port, path_suffix, backlog=16)

    def _serve(self, client: socket.socket, upstream: socket.socket) -> None:
        losing = threading.Event()  # the request in flight is one whose answer gets lost
        answered = threading.Event()

        def pump_back() -> None:
            try:
                while True:
                    data = upstream.recv(65536)
                    if not data:
                        break
                    if losing.is_set():  # HTTP/1.1 without pipelining: this is that request's answer
                        break
                    client.sendall(data)
            except OSError:
                pass
            finally:
                answered.set()

        threading.Thread(target=pump_back, daemon=True).start()
        while True:
            data = client.recv(65536)
            if not data:
                break
            if self._matches(data):
                with self._lock:
                    self.forwarded_matching += 1
                    lose = self.dropped < self.drop
                    if lose:
                        self.dropped += 1
                if lose:
                    losing.set()
                    upstream.sendall(data)
                    answered.wait(30)  # OpenBao answered: the request took effect; the answer is lost
                    break
            upstream.sendall(data)
