"""What every bench script records beside its numbers."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """The commit the run measured: git's HEAD, else $AGENTKV_COMMIT (a copy without .git, as
    on a lent GPU machine), else "unknown"."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("AGENTKV_COMMIT", "unknown")
