"""Real git servers on 127.0.0.1 for fetch tests: smart HTTPS with basic auth (git http-backend) and one that hangs."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(dirpath: Path, hosts: tuple[str, ...] = ("127.0.0.1",)) -> tuple[Path, Path]:
    """A certificate for the loopback addresses `hosts` and its key; it doubles as the CA file for git."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(h)) for h in hosts]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file = dirpath / "server.pem"
    key_file = dirpath / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


class GitHTTPSServer:
    """Serves every repository under `root` through `git http-backend`, behind HTTP basic auth."""

    def __init__(self, root: Path, certdir: Path, *, username: str, password: str,
                 on_auth: Callable[[], Any] | None = None, host: str = "127.0.0.1",
                 cert: tuple[Path, Path] | None = None, redirect_to: str | None = None) -> None:
        """`host`: the loopback address to listen on; `cert`: a (certificate, key) pair to serve instead of
        a fresh one (so several servers share one CA file); `redirect_to`: answer every request with a
        302 to this base URL instead (a git server that bounces clients elsewhere)."""
        self.root = root
        self.username = username
        self.password = password
        self.on_auth = on_auth
        self.host = host
        self.redirect_to = redirect_to
        self.seen_auth: list[str] = []
        self.requests: list[str] = []
        self.snapshots: list[Any] = []
        self.cert_file, key_file = cert or self_signed(certdir, (host,))
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _auth_ok(self) -> bool:
                header = self.headers.get("Authorization", "")
                if not header.startswith("Basic "):
                    return False
                decoded = base64.b64decode(header[6:]).decode()
                outer.seen_auth.append(decoded)
                if outer.on_auth is not None:
                    outer.snapshots.append(outer.on_auth())
                return decoded == f"{outer.username}:{outer.password}"

            def _handle(self) -> None:
                outer.requests.append(self.path)
                if outer.redirect_to is not None:
                    self.send_response(302)
                    self.send_header("Location", outer.redirect_to + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if not self._auth_ok():
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="fleet"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path, _, query = self.path.partition("?")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                env = {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "GIT_PROJECT_ROOT": str(outer.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "REQUEST_METHOD": self.command,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_USER": outer.username,
                    "REMOTE_ADDR": "127.0.0.1",
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                    "GIT_CONFIG_NOSYSTEM": "1",
                    "GIT_CONFIG_GLOBAL": os.devnull,
                }
                out = subprocess.run(["git", "http-backend"], input=body, capture_output=True, env=env).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                status = 200
                headers = []
                for line in head.decode("latin-1").split("\r\n"):
                    if not line:
                        continue
                    k, _, v = line.partition(":")
                    if k.lower() == "status":
                        status = int(v.strip().split()[0])
                    else:
                        headers.append((k, v.strip()))
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = _handle
            do_POST = _handle

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, key_file)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, repo: str) -> str:
        return f"https://{self.host}:{self.port}/{repo}"

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> GitHTTPSServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class HangingServer:
    """Accepts TCP connections and never answers (git then waits in the TLS handshake)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.connected = threading.Event()  # set once a client (git) has connected
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.connected.set()

    def __enter__(self) -> HangingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()
