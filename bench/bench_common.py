"""What every bench script records beside its numbers."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """The commit the run measured: $AGENTKV_COMMIT when set (a copied tree, whose .git may be
    missing or stale), else git's HEAD, else "unknown"."""
    env = os.environ.get("AGENTKV_COMMIT")
    if env:
        return env
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hardware_tag(name: str) -> str:
    """A short name for result files: 'h200', 'h100', else the device name squeezed."""
    for tag in ("H200", "H100"):
        if tag in name:
            return tag.lower()
    return name.lower().replace("nvidia ", "").replace(" ", "")
