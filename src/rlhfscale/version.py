"""The code version every artifact records: package version, git commit, dirty flag and a digest
of the package's source files.

The digest is what tells two code versions apart (a dirty tree changes it, a commit that touches
only docs does not); the commit and dirty flag say where the code came from. Torch-free.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path
from typing import Any

from . import __version__

PACKAGE_DIR = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def source_digest(root: Path = PACKAGE_DIR) -> str:
    """sha256 over the package's ``*.py`` files (relative path and bytes), first 16 hex characters."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.cache
def code_version() -> dict[str, Any]:
    """``{"package", "commit", "dirty", "source"}`` of the running code (commit None outside a git checkout)."""
    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", str(PACKAGE_DIR))) if commit else None
    return {"package": __version__, "commit": commit, "dirty": dirty, "source": source_digest()}


def describe(code: dict[str, Any]) -> str:
    """A short readable name of a code version: ``0.1.0 @ 1a2b3c4d (dirty) src 9f8e...``."""
    commit = (code.get("commit") or "no-git")[:8]
    return f"{code.get('package')} @ {commit}{' (dirty)' if code.get('dirty') else ''} src {code.get('source')}"
