"""Run mypy over the package as it installs.

``envs/`` and ``agents/`` install as ``metarl.envs`` and ``metarl.agents`` (a setuptools
``package-dir`` mapping), which a type checker reading the source tree cannot see. This
script mirrors the installed layout with symlinks under ``build/typecheck/`` and checks that.

Usage: python scripts/typecheck.py [extra mypy args]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = {"metarl": ROOT / "metarl", "metarl/envs": ROOT / "envs", "metarl/agents": ROOT / "agents"}


def build_tree(dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    for target, source in LAYOUT.items():
        for path in source.rglob("*.py"):
            rel = path.relative_to(source)
            if "__pycache__" in rel.parts:
                continue
            link = dest / target / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    return dest


def main() -> int:
    tree = build_tree(ROOT / "build" / "typecheck")
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
    cmd += [*sys.argv[1:], "-p", "metarl"]
    return subprocess.call(cmd, cwd=tree)


if __name__ == "__main__":
    sys.exit(main())
