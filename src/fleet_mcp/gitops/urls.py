"""Validation of what a caller may tell git: repository URL, branch and path prefix.

Every value here ends up as an argument of a `git` process, so anything that git could read as an
option, a remote helper (`ext::sh -c …`), an inline credential or a path outside the repository
is refused up front, with a hint saying what is accepted.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from fleet_mcp.errors import InvalidArgument

MAX_URL_LENGTH = 2048
MAX_BRANCH_LENGTH = 255
MAX_PREFIX_LENGTH = 512

_ACCEPTED = "https://host/path, ssh://[user@]host[:port]/path or user@host:path"
_CTRL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
_CTRL = re.compile(r"[\x00-\x1f\x7f]")
_HELPER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+.-]*::")
_HOST = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
_SCP = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>[^@/:\[\]]+):(?P<path>.*)$")
_PATH_CHARS = re.compile(r"^[A-Za-z0-9._~/+@%=,-]*$")
_BRANCH_CHARS = re.compile(r"[A-Za-z0-9._/+-]+")  # used with fullmatch: `$` would accept a trailing newline

Transport = Literal["https", "ssh", "local"]


_DEFAULT_PORT = {"https": 443, "ssh": 22}


@dataclass(frozen=True)
class RepoURL:
    """A validated repository URL, the transport git will use for it and the host it talks to.

    `host` is the lower-cased host name (IPv6 in brackets) plus `:port` when a port other than the
    transport's default is given; None for local repositories. A stored git credential is bound to
    exactly this value (see `gitops.credentials`)."""

    url: str
    transport: Transport
    host: str | None = None


def host_key(transport: str, host: str, port: int | None) -> str:
    """`host[:port]` as compared with a credential's binding (default port dropped, name lower-cased)."""
    host = host.lower()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host if port is None or port == _DEFAULT_PORT.get(transport) else f"{host}:{port}"


def parse_bound_host(value: object, transport: str) -> str:
    """Normalise the `host` a credential is bound to ('github.com', 'git.example:8443', '[::1]:2222')."""
    hint = "set metadata.host to the host name the credential is for, e.g. github.com or git.example:8443"
    if not isinstance(value, str) or not value or len(value) > 300 or _CTRL_OR_SPACE.search(value):
        raise InvalidArgument("the credential's metadata.host is missing or not a host name", hint=hint)
    try:
        parts = urlsplit(f"//{value}")
        port = parts.port
    except ValueError:
        raise InvalidArgument("the credential's metadata.host is not a host[:port]", hint=hint) from None
    if parts.netloc != value or parts.path or parts.query or parts.fragment or "@" in value or not parts.hostname:
        raise InvalidArgument("the credential's metadata.host must be a bare host[:port] (no scheme, user or path)",
                              hint=hint)
    try:
        _check_host(value, parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]")
    except InvalidArgument:
        raise InvalidArgument("the credential's metadata.host is not a valid host name", hint=hint) from None
    return host_key(transport, parts.hostname, port)


def _refuse(url: str, problem: str, hint: str = f"use {_ACCEPTED}") -> InvalidArgument:
    # Never echo a URL that may carry a credential: name the problem only.
    return InvalidArgument(f"repository URL refused: {problem}", hint=hint)


def _check_host(url: str, host: str | None) -> str:
    if not host:
        raise _refuse(url, "no host")
    if host.startswith("-"):
        raise _refuse(url, "the host looks like a command-line option")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
        return host
    except ValueError:
        pass
    if not _HOST.fullmatch(host):
        raise _refuse(url, "the host is not a valid host name")
    return host


def _check_repo_path(url: str, path: str) -> None:
    if not path or path in ("/", "~"):
        raise _refuse(url, "no repository path")
    if path.startswith("-") or "/-" in path:
        raise _refuse(url, "a path component looks like a command-line option")
    if not _PATH_CHARS.fullmatch(path):
        raise _refuse(url, "the path contains characters git URLs do not need")
    if any(part == ".." for part in path.split("/")):
        raise _refuse(url, "the path contains '..'")


def validate_repo_url(url: str, *, allow_local: bool = False) -> RepoURL:
    """Accept https, ssh and scp-like URLs; `file://` and absolute local paths only when `allow_local`."""
    if not isinstance(url, str) or not url:
        raise _refuse("", "empty")
    if len(url) > MAX_URL_LENGTH:
        raise _refuse(url, f"longer than {MAX_URL_LENGTH} characters")
    if url.lstrip().startswith("-"):
        raise _refuse(url, "looks like a command-line option (leading '-')")
    if _HELPER.match(url) or "::" in url.split("/", 1)[0]:
        raise _refuse(url, "git remote helpers ('<transport>::<address>', e.g. ext::) are not allowed")
    if _CTRL_OR_SPACE.search(url):
        raise _refuse(url, "contains whitespace or control characters")

    lower = url.lower()
    if lower.startswith(("https://", "ssh://", "file://")) or "://" in url:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise _refuse(url, "not a parseable URL") from None
        scheme = parts.scheme.lower()
        if scheme == "file":
            if not allow_local:
                raise _refuse(
                    url,
                    "file:// repositories are disabled",
                    hint="set FLEET_MCP_ALLOW_LOCAL_REPOS=1 (tests, demos) or use a remote URL",
                )
            if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
                raise _refuse(url, "file:// URLs take an absolute path and nothing else", hint="use file:///abs/path")
            _check_local_path(url, parts.path)
            return RepoURL(url, "local")
        if scheme not in ("https", "ssh"):
            raise _refuse(url, f"scheme {scheme or '?'}:// is not allowed")
        if parts.password is not None or (scheme == "https" and "@" in parts.netloc):
            raise _refuse(
                url,
                "credentials inside the URL are not allowed",
                hint="store them with system_vault_store_credential and pass credential=<name>",
            )
        if "@" in parts.netloc and (parts.username is None or not _USER.fullmatch(parts.username)):
            raise _refuse(url, "the user name is not valid")
        if parts.query or parts.fragment:
            raise _refuse(url, "query strings and fragments are not allowed")
        if port is not None and not 0 < port < 65536:
            raise _refuse(url, "the port is out of range")
        if parts.netloc.split("@")[-1].startswith("-"):
            raise _refuse(url, "the host looks like a command-line option")
        _check_host(url, parts.hostname)
        _check_repo_path(url, parts.path.lstrip("/"))
        transport: Transport = "https" if scheme == "https" else "ssh"
        return RepoURL(url, transport, host_key(transport, parts.hostname or "", port))

    if url.startswith("/"):
        if not allow_local:
            raise _refuse(
                url,
                "local repository paths are disabled",
                hint="set FLEET_MCP_ALLOW_LOCAL_REPOS=1 (tests, demos) or use a remote URL",
            )
        _check_local_path(url, url)
        return RepoURL(url, "local")

    m = _SCP.match(url)
    if m and "/" not in url.split(":", 1)[0]:
        user, host, path = m.group("user"), m.group("host"), m.group("path")
        if user is not None and not _USER.fullmatch(user):
            raise _refuse(
                url,
                "the user name is not valid (and passwords are never accepted)",
                hint="store credentials with system_vault_store_credential and pass credential=<name>",
            )
        _check_host(url, host)
        if path.startswith("//"):
            raise _refuse(url, "not a valid scp-like address")
        _check_repo_path(url, path.lstrip("/"))
        return RepoURL(url, "ssh", host_key("ssh", host, None))
    raise _refuse(url, "not a recognised git URL (relative paths are never accepted)")


def _check_local_path(url: str, path: str) -> None:
    if not path.startswith("/"):
        raise _refuse(url, "local repositories need an absolute path")
    if any(part == ".." for part in path.split("/")):
        raise _refuse(url, "the path contains '..'")
    if "/-" in path:
        raise _refuse(url, "a path component looks like a command-line option")


def validate_branch(branch: str) -> str:
    """A branch name git accepts and cannot mistake for an option, a refspec or a revision expression.

    The name is the short one (`main`, `release/2026-07`): the fetch builds `refs/heads/<branch>` itself,
    so a full ref would fetch `refs/heads/refs/heads/main`, and a leading '+' would read as a forced refspec.
    """
    hint = (
        "use a plain branch name such as main or release/2026-07: letters, digits, '.', '_', '-', '/' "
        "(and '+' inside), without refs/heads/, a leading '+', '-', '.' or '/', '..' or a trailing '.lock'"
    )
    if not isinstance(branch, str) or not branch:
        raise InvalidArgument("branch must not be empty", hint=hint)
    if _CTRL.search(branch):
        raise InvalidArgument("branch contains control characters (e.g. a newline)", hint=hint)
    if len(branch) > MAX_BRANCH_LENGTH:
        raise InvalidArgument(f"branch is longer than {MAX_BRANCH_LENGTH} characters", hint=hint)
    if not _BRANCH_CHARS.fullmatch(branch):
        raise InvalidArgument(f"branch {branch[:80]!r} contains characters that are not allowed", hint=hint)
    if branch.startswith("+"):
        raise InvalidArgument(f"branch {branch!r} may not start with '+' (that marks a forced refspec)", hint=hint)
    if branch.startswith("refs/") or branch in ("refs", "heads") or branch.startswith("heads/"):
        raise InvalidArgument(f"branch {branch!r} is not a full ref: give only the branch's name", hint=hint)
    if (
        branch.startswith(("-", "/", "."))
        or branch.endswith(("/", ".", ".lock"))
        or ".." in branch
        or "//" in branch
        or "/." in branch
        or branch == "HEAD"
    ):
        raise InvalidArgument(f"branch {branch!r} is not a valid branch name", hint=hint)
    return branch


def validate_path_prefix(prefix: str | None) -> str:
    """A relative folder inside the repository ('' for the root); normalised without surrounding slashes."""
    hint = "give a folder relative to the repository root, e.g. 'fleets/prod' (or '' for the root)"
    if prefix is None or prefix == "":
        return ""
    if not isinstance(prefix, str) or len(prefix) > MAX_PREFIX_LENGTH:
        raise InvalidArgument("path_prefix is too long", hint=hint)
    if _CTRL.search(prefix) or "\\" in prefix:
        raise InvalidArgument("path_prefix contains control characters or backslashes", hint=hint)
    if prefix.startswith("/") or re.match(r"^[A-Za-z]:", prefix):
        raise InvalidArgument("path_prefix must be relative, not absolute", hint=hint)
    parts = prefix.rstrip("/").split("/")
    for part in parts:
        if part == "..":
            raise InvalidArgument("path_prefix may not contain '..'", hint=hint)
        if part in ("", "."):
            raise InvalidArgument("path_prefix has an empty or '.' component", hint=hint)
        if part.startswith("-"):
            raise InvalidArgument("path_prefix has a component that looks like an option", hint=hint)
        if part.lower() == ".git":
            raise InvalidArgument("path_prefix may not point into .git", hint=hint)
    return "/".join(parts)


def fleet_file_path(prefix: str) -> str:
    """Path of fleet.yaml inside the repository for a validated prefix."""
    return f"{prefix}/fleet.yaml" if prefix else "fleet.yaml"
