"""GitOps test helpers: a real temporary git repository with a fleet.yaml."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Fleet Test",
    "GIT_AUTHOR_EMAIL": "fleet@example.test",
    "GIT_COMMITTER_NAME": "Fleet Test",
    "GIT_COMMITTER_EMAIL": "fleet@example.test",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}

BASE_FLEET = """\
templates:
  web:
    description: Web nodes
    node_platform: linux
    metadata: {team: web}
  db:
    description: Databases
modules:
  nginx: {variety: role, priority: 10, version: "1.25"}
  postgres: {variety: instance, priority: 5}
assignments:
  web:nginx: {priority: 1}
  db:postgres: {}
provider_configs:
  aws-eu: {provider: aws, region: eu-west-1, settings: {credential: aws-prod}}
"""


class FleetRepo:
    """A real git repository in a temp dir; `commit` writes files and returns the new commit sha."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")

    @property
    def url(self) -> str:
        return str(self.path)

    def git(self, *args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(self.path), *args],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, **GIT_ENV},
        )
        return out.stdout.strip()

    def write(self, rel: str, content: str | bytes) -> None:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)

    def commit(self, files: dict[str, str | bytes] | None = None, message: str = "update", *,
               remove: tuple[str, ...] = ()) -> str:
        for rel, content in (files or {}).items():
            self.write(rel, content)
        for rel in remove:
            self.git("rm", "-q", rel)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")
