"""The stdio transport as a client's process sees it: every line gets an answer, even a hostile one, and no
line can make the server hold more than the request limit."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import cli_env

INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


class StdioServer:
    """`fleet-mcp serve` over real pipes; replies are read by a thread into a list, one per line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "fleet_mcp", "serve"], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.replies: list[dict] = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.replies.append(json.loads(line))
                self.cond.notify_all()
        with self.cond:
            self.replies.append({"eof": True})
            self.cond.notify_all()

    def send(self, raw: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(raw + b"\n")
        self.proc.stdin.flush()

    def reply(self, n: int) -> dict:
        """The n-th reply (0-based); waits for it (bounded, so a missing reply fails instead of hanging)."""
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.replies) > n, timeout=60), \
                f"no reply #{n}; got {self.replies}"
            return self.replies[n]

    def close(self) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""


@pytest.fixture
def stdio(tmp_path: Path):  # noqa: ANN201
    env = cli_env(tmp_path / "data", f"sqlite+aiosqlite:///{tmp_path / 'fleet.db'}", FLEET_MCP_SCHEDULER="false")
    server = StdioServer(env)
    server.send(json.dumps(INIT).encode())
    assert server.reply(0)["id"] == 0
    server.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    yield server
    server.close()


def _ping(i: int) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": i, "method": "ping"}).encode()


def test_hostile_lines_get_a_parse_error_and_the_server_keeps_serving(stdio: StdioServer) -> None:
    deep = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"system_list_templates",' \
           b'"arguments":{"a":' + b"[" * 300 + b"]" * 300 + b"}}}"
    surrogate = (b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"system_get_template",'
                 b'"arguments":{"name":"\\ud800"}}}')
    surrogate_tool = b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"\\udc00x","arguments":{}}}'
    cases = [surrogate, surrogate_tool, deep, b"not json at all"]
    n = 1
    for raw in cases:
        stdio.send(raw)
        got = stdio.reply(n)
        assert got["id"] is None and got["error"]["code"] == -32700, got
        assert "parse error" in got["error"]["message"]
        n += 1
        stdio.send(_ping(100 + n))
        assert stdio.reply(n) == {"jsonrpc": "2.0", "id": 100 + n, "result": {}}, "the server stopped answering"
        n += 1


def test_json_that_is_not_a_request_gets_invalid_request_with_its_id(stdio: StdioServer) -> None:
    stdio.send(b'{"jsonrpc":"2.0","id":5,"params":{}}')
    got = stdio.reply(1)
    assert got["id"] == 5 and got["error"]["code"] == -32600


def test_a_line_beyond_the_request_limit_is_refused_without_being_held(stdio: StdioServer) -> None:
    from fleet_mcp.server import MAX_STDIO_MESSAGE_BYTES

    big = b'{"jsonrpc":"2.0","id":7,"method":"ping","params":{"x":"' + b"a" * (MAX_STDIO_MESSAGE_BYTES + 10) + b'"}}'
    stdio.send(big)
    got = stdio.reply(1)
    assert got["id"] is None and got["error"]["code"] == -32600
    assert str(MAX_STDIO_MESSAGE_BYTES) in got["error"]["message"]
    stdio.send(_ping(8))
    assert stdio.reply(2)["id"] == 8
