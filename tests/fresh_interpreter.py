"""Run code in a fresh, isolated Python, for tests of what importing a module needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the child finds this project's packages through the root passed as its argument
ON_ROOT = "import sys; sys.path.insert(0, sys.argv[1]); "


def run_isolated(code: str, *, stdlib_only: bool = False) -> subprocess.CompletedProcess:
    """Run `code` under `python -I` (no PYTHONPATH, no user site) with the repository
    root first on sys.path; with `stdlib_only`, also `-S`, so no installed package
    is found. Returns the finished process, its stdout and stderr as text."""
    flags = ["-I", "-S"] if stdlib_only else ["-I"]
    return subprocess.run(
        [sys.executable, *flags, "-c", ON_ROOT + code, str(ROOT)],
        capture_output=True,
        text=True,
    )
