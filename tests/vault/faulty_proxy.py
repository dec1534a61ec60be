"""A FAKE at the transport: a loopback TCP proxy in front of a real OpenBao that loses answers.

It forwards every byte both ways, except that for the first `drop` requests whose request line matches
`path_suffix`, it lets the request reach OpenBao, waits for OpenBao's answer to begin (so the request was
processed), and then closes the client's connection without passing the answer on — the client sees a
connection error for a request that took effect. Nothing else can produce that reliably."""

from __future__ import annotations

import socket
import threading


class AnswerLosingProxy:
    def __init__(self, upstream_port: int, path_suffix: bytes, drop: int = 1) -> None:
        self.upstream_port = upstream_port
        self.path_suffix = path_suffix
        self.drop = drop
        self.dropped = 0
        self.forwarded_matching = 0
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self.addr = f"http://127.0.0.1:{self.port}"
        self._closed = False
        self._threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(client,), daemon=True)
            t.start()
            self._threads.append(t)

    def _matches(self, data: bytes) -> bool:
        line = data.split(b"\r\n", 1)[0]
        parts = line.split(b" ")
        return len(parts) >= 2 and parts[0] in (b"POST", b"PUT") and parts[1].endswith(self.path_suffix)

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
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

        back = threading.Thread(target=pump_back, daemon=True)
        back.start()
        try:
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
        self._closed = True
        self._sock.close()
