"""The federation endpoint's wire: one JSON request per TLS connection over HTTP/1.1, with hard limits.

Deliberately small (no framework): every read is bounded in size and time on both sides, and the server
hands the handler the DER of the client certificate the TLS layer verified (the channel identity)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fleet_mcp.errors import ExternalError, InvalidArgument

log = logging.getLogger(__name__)

MAX_HEADER = 16 * 1024
MAX_BODY = 256 * 1024
TIMEOUT = 10.0
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            409: "Conflict", 410: "Gone", 413: "Payload Too Large", 429: "Too Many Requests",
            500: "Internal Server Error"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: dict[str, Any] | None
    client_cert_der: bytes | None
    #: The TLS context the connection ended up with (a probe context chosen by SNI, or the endpoint's).
    tls_context: Any = None


Handler = Callable[[Request], Awaitable[tuple[int, dict[str, Any]]]]
#: Asked once per request with (source address, whether a client certificate was presented): None admits it,
#: a number refuses it at once with 429 and that many seconds in Retry-After.
Admit = Callable[[str, bool], "int | None"]


class WireError(Exception):
    """A protocol-level refusal the handler turns into a status and a JSON error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise WireError(413, "too_large", "headers too large") from None
    except asyncio.IncompleteReadError:
        raise WireError(400, "malformed", "connection closed before the headers ended") from None
    if len(head) > MAX_HEADER:
        raise WireError(413, "too_large", "headers too large")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return lines[0], headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise WireError(400, "malformed", "bad Content-Length") from None
    if length < 0 or length > MAX_BODY:
        raise WireError(413, "too_large", f"body larger than {MAX_BODY} bytes")
    try:
        return await reader.readexactly(length) if length else b""
    except asyncio.IncompleteReadError:
        raise WireError(400, "malformed", "body shorter than Content-Length") from None


def _decode(raw: bytes) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise WireError(400, "malformed", "body is not JSON") from None
    if not isinstance(value, dict):
        raise WireError(400, "malformed", "body is not a JSON object")
    return value


def _encode(status: int, body: dict[str, Any], retry_after: int | None = None) -> bytes:
    data = json.dumps(body).encode()
    extra = f"Retry-After: {retry_after}\r\n" if retry_after is not None else ""
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n{extra}Connection: close\r\n\r\n"
    )
    return head.encode() + data


async def serve(
    host: str, port: int, ctx: ssl.SSLContext, handler: Handler, *, admit: Admit | None = None
) -> asyncio.Server:
    """Start the listener; each connection carries one request and is closed after the answer. With `admit`,
    a source over its rate gets 429 as soon as its request is read: the handler (and the database) never
    sees it."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sslobj = writer.get_extra_info("ssl_object")
            der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
            peer = writer.get_extra_info("peername")
            source = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
            retry_after: int | None = None
            try:
                async with asyncio.timeout(TIMEOUT):
                    line, headers = await _read_head(reader)
                    parts = line.split(" ")
                    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                        raise WireError(400, "malformed", "bad request line")
                    raw = await _read_body(reader, headers)  # read (bounded) even when refused: no reset
                    retry_after = admit(source, bool(der)) if admit is not None else None
                    if retry_after is not None:
                        raise WireError(429, "rate_limited", f"too many requests from {source}; retry after "
                                        f"{retry_after} s")
                    body = _decode(raw)
                tls_ctx = sslobj.context if sslobj is not None else None
                status, out = await handler(Request(parts[0].upper(), parts[1], body, der, tls_ctx))
            except WireError as exc:
                status, out = exc.status, {"error": {"code": exc.code, "message": exc.message}}
            except TimeoutError:
                status, out = 400, {"error": {"code": "timeout", "message": "request not received in time"}}
            writer.write(_encode(status, out, retry_after))
            async with asyncio.timeout(TIMEOUT):
                await writer.drain()
        except Exception:  # noqa: BLE001 - one bad connection never stops the listener
            log.exception("federation endpoint: connection failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(
        on_connection, host, port, ssl=ctx, ssl_handshake_timeout=TIMEOUT, limit=MAX_HEADER
    )


# -- client ----------------------------------------------------------------------------------------


def split_endpoint(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
        raise InvalidArgument(f"{url!r} is not a federation endpoint URL", hint="use https://HOST:PORT")
    return parts.hostname, parts.port or 443


def probe_context() -> ssl.SSLContext:
    """For the one unauthenticated fetch of the endpoint's CA (checked against the pin afterwards)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def pinned_context(
    ca_pem: str, *, client_chain_pem: str | None = None, client_key_pem: bytes | None = None
) -> ssl.SSLContext:
    """Trusts only the pinned instance CA (no system store); optionally presents a channel certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.options |= ssl.OP_NO_TICKET
    ctx.load_verify_locations(cadata=ca_pem)
    if client_chain_pem and client_key_pem:
        with tempfile.TemporaryDirectory(prefix="fleet-fedcli-") as tmp:
            chain, key = os.path.join(tmp, "chain.pem"), os.path.join(tmp, "key.pem")
            with open(chain, "w") as f:
                f.write(client_chain_pem)
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(client_key_pem)
            ctx.load_cert_chain(chain, key)
    return ctx


async def call(
    endpoint: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    *,
    ctx: ssl.SSLContext,
    server_hostname: str | None,
    timeout: float = TIMEOUT,  # noqa: ASYNC109 - one bound for connect, TLS, write and read
) -> tuple[int, dict[str, Any]]:
    """One request; connection, TLS and I/O errors and timeouts become ExternalError (no secret in it)."""
    host, port = split_endpoint(endpoint)
    data = json.dumps(body).encode() if body is not None else b""
    req = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode() + data
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=server_hostname or "", limit=MAX_HEADER
            )
            writer.write(req)
            await writer.drain()
            line, headers = await _read_head(reader)
            status = int(line.split(" ")[1])
            out = _decode(await _read_body(reader, headers)) or {}
    except TimeoutError:
        raise ExternalError(
            f"the federation endpoint {endpoint} did not answer within {timeout:g} s",
            hint="check that the remote instance runs with --federation-listen and the port is open",
            endpoint=endpoint,
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise ExternalError(
            f"the federation endpoint {endpoint} failed certificate verification: {exc.verify_message}",
            hint="the endpoint does not present a certificate of the pinned instance CA",
            endpoint=endpoint,
        ) from None
    except WireError as exc:
        raise ExternalError(
            f"the federation endpoint {endpoint} answered badly ({exc.message})",
            hint="the remote instance sent something this one refuses; ask its operators",
            endpoint=endpoint,
            wire_code=exc.code,
        ) from None
    except (OSError, ssl.SSLError, ValueError, IndexError) as exc:
        raise ExternalError(
            f"the federation endpoint {endpoint} could not be reached ({type(exc).__name__})",
            hint="check the address and that the remote instance is up",
            endpoint=endpoint,
        ) from None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    return status, out
