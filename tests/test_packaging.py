"""`pip install .` gives a working package: envs/ and agents/ land as metarl.envs and
metarl.agents, nothing plainly named `envs` or `agents` reaches site-packages."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_layout(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("metarl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "envs" not in tops and "agents" not in tops
    assert "metarl/py.typed" in names
    assert "metarl/envs/navigation.py" in names
    assert "metarl/agents/__init__.py" in names
    # Every Python file of envs/ and agents/ made it (subpackages included).
    for src, dst in (("envs", "metarl/envs"), ("agents", "metarl/agents"), ("metarl", "metarl")):
        for path in (ROOT / src).rglob("*.py"):
            rel = path.relative_to(ROOT / src).as_posix()
            assert f"{dst}/{rel}" in names, f"{src}/{rel} is missing from the wheel"
    # The installed wheel works on its own: import it from a clean directory.
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import metarl, gymnasium as gym;"
        "assert metarl.__file__.startswith(sys.argv[1]), metarl.__file__;"
        "env = gym.make('metarl/Navigation2D-v0'); env.reset(seed=0); print('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(site)], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.stdout.strip() == "ok", out.stderr


def test_the_main_job_needs_no_extra() -> None:
    """The README's first command is `pip install -e .` then `metarl train` and `metarl
    evaluate`, which writes a PNG: matplotlib must be a core dependency (stable-baselines3
    >= 2.8 stopped pulling it in, and the first command failed on a fresh machine)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = text.split("\ndependencies = [", 1)[1].split("\n]", 1)[0]  # tomllib is 3.11+
    deps = re.findall(r'^\s*"([^"]+)"', block, flags=re.M)
    names = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in deps}
    for needed in (
        "matplotlib",
        "torch",
        "gymnasium",
        "mujoco",
        "numpy",
        "stable-baselines3",
        "tyro",
    ):
        assert needed in names, f"{needed} is not a core dependency: {sorted(names)}"
    readme = (ROOT / "README.md").read_text()
    first = next(line for line in readme.splitlines() if "metarl train" in line)
    assert "pip install -e . " in first and "metarl evaluate" in first, first


def test_device_checks_script_parses_and_names_its_groups() -> None:
    """scripts/device_checks.sh runs only on a GPU machine, so CI checks that bash can
    parse it and that its usage text names every group its `run` accepts."""
    script = ROOT / "scripts" / "device_checks.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert usage.returncode == 2 and "device_checks.sh prepare" in usage.stdout
    groups = re.findall(r"^\s+(\w+)\) #", script.read_text(), flags=re.M)
    assert {"tests", "maml", "fewshot", "sampler", "torchenvs", "rl2", "mjx"} <= set(groups)
    for g in groups:
        assert g in usage.stdout, f"the usage text does not mention group {g}"
