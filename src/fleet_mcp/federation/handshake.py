"""Real mutual-TLS handshakes over loopback between two node identities, each trusting only its own bundle."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio

DEFAULT_TIMEOUT = 5.0
_PROBE = b"fleet-mcp-federation-ok\n"


@dataclass(frozen=True, repr=False)
class NodeIdentity:
    """What one node holds: its leaf, the chain it presents, its key, and what it trusts."""

    label: str
    dns_name: str
    chain_pem: str  # [leaf, own intermediate] — never the cross certificate (docs/federation-protocol.md: a peer verifies through its own bundle)
    key_pem: bytes
    trust_pem: str
    crl_pems: tuple[str, ...] = field(default_factory=tuple)

    def __repr__(self) -> str:
        return f"NodeIdentity(label={self.label!r}, dns_name={self.dns_name!r})"


@dataclass(frozen=True)
class DirectionResult:
    client: str
    server: str
    ok: bool
    error: str | None
    tls_version: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "from": self.client,
            "to": self.server,
            "ok": self.ok,
            "error": self.error,
            "tls_version": self.tls_version,
        }


@contextlib.contextmanager
def _identity_files(node: NodeIdentity) -> Iterator[tuple[str, str, str]]:
    # The stdlib loads keys (and CRLs) only from files: a private 0700 temp dir, removed at once.
    with tempfile.TemporaryDirectory(prefix="fleet-fed-") as tmp:
        chain_path, key_path = os.path.join(tmp, "chain.pem"), os.path.join(tmp, "key.pem")
        trust_path = os.path.join(tmp, "trust.pem")
        with open(chain_path, "w") as f:
            f.write(node.chain_pem)
        with open(trust_path, "w") as f:
            f.write(node.trust_pem + "".join(node.crl_pems))
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(node.key_pem)
        yield chain_path, key_path, trust_path


def build_context(node: NodeIdentity, *, server: bool) -> ssl.SSLContext:
    """A fresh context per check: a kept context would resume sessions and ignore later revocation."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = not server
    ctx.options |= ssl.OP_NO_TICKET
    with _identity_files(node) as (chain_path, key_path, trust_path):
        ctx.load_cert_chain(chain_path, key_path)
        # A PEM file (unlike cadata) may carry CRLs next to the certificates.
        ctx.load_verify_locations(cafile=trust_path)
    if node.crl_pems:
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    return ctx


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def check_direction(
    client: NodeIdentity, server: NodeIdentity, *, timeout: float = DEFAULT_TIMEOUT
) -> DirectionResult:
    """`client` connects to `server` on 127.0.0.1; ok only when both sides verified the other."""
    try:
        server_ctx = build_context(server, server=True)
        client_ctx = build_context(client, server=False)
    except (ssl.SSLError, ValueError, OSError) as exc:
        return DirectionResult(
            client.label, server.label, False, f"could not load identities: {_reason(exc)}", None
        )

    server_error: list[BaseException] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(timeout)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            server_error.append(exc)
            return
        with conn:
            conn.settimeout(timeout)
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(_PROBE)
                    with contextlib.suppress(OSError):
                        tls.recv(1)  # wait for the client's close so our probe is read
            except (OSError, ssl.SSLError) as exc:
                server_error.append(exc)

    thread = threading.Thread(target=serve, name="fleet-fed-handshake", daemon=True)
    thread.start()
    client_error: BaseException | None = None
    version: str | None = None
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server.dns_name) as tls:
                version = tls.version()
                # TLS 1.3 finishes the client's handshake before the server has judged our certificate.
                data = b""
                while len(data) < len(_PROBE):
                    chunk = tls.recv(len(_PROBE) - len(data))
                    if not chunk:
                        break
                    data += chunk
                if data != _PROBE:
                    client_error = ConnectionError("server closed the connection")
    except (OSError, ssl.SSLError) as exc:
        client_error = exc
    finally:
        thread.join(timeout + 1)
        listener.close()

    if not server_error and client_error is None:
        return DirectionResult(client.label, server.label, True, None, version)
    # The side that failed verification is the one that judged; the other only saw its alert.
    s_exc = server_error[0] if server_error else None
    if isinstance(client_error, ssl.SSLCertVerificationError) or s_exc is None:
        assert client_error is not None
        error = f"{client.label} (client) rejected {server.label}: {_reason(client_error)}"
    else:
        error = f"{server.label} (server) rejected {client.label}: {_reason(s_exc)}"
    return DirectionResult(client.label, server.label, False, error, None)


def check_both_directions(
    a: NodeIdentity, b: NodeIdentity, *, timeout: float = DEFAULT_TIMEOUT
) -> list[DirectionResult]:
    return [check_direction(a, b, timeout=timeout), check_direction(b, a, timeout=timeout)]


async def verify_mutual_tls(
    a: NodeIdentity,
    b: NodeIdentity,
    *,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - per-socket timeouts inside the worker thread
) -> list[DirectionResult]:
    """Both directions (a→b then b→a) on a worker thread, so the event loop keeps running."""
    return await anyio.to_thread.run_sync(lambda: check_both_directions(a, b, timeout=timeout))
