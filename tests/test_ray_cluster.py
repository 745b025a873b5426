"""The multi-machine Ray recipe of docs/samplers.md, on one machine: a head and a second node
on loopback with Ray's token authentication, and `metarl train --sampler ray --ray-address`
against it gives exactly the native sampler's metrics.

Slow (two Ray nodes and two short trainings, about a minute); the cluster is always stopped,
and every command has a time limit, so a failure never leaves it running or hangs.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")

pytestmark = pytest.mark.slow

#: wall-clock columns of metrics.csv, which differ between any two runs
_TIMING = ("_s", "per_s", "seconds", "time", "wall")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metrics(run: Path) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO((run / "metrics.csv").read_text())))
    keep = [i for i, name in enumerate(rows[0]) if not name.endswith(_TIMING)]
    return [[row[i] for i in keep] for row in rows]


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out


def _nodes_alive(address: str, env: dict[str, str]) -> int:
    code = (f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
            "print(sum(n['Alive'] for n in ray.nodes()))")  # fmt: skip
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    except subprocess.TimeoutExpired:
        return 0
    lines = out.stdout.split()
    return int(lines[-1]) if out.returncode == 0 and lines and lines[-1].isdigit() else 0


def _wait_for_nodes(address: str, env: dict[str, str], n: int, nodes: list[Any],
                    logs: list[Path]) -> None:  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for node, log in zip(nodes, logs, strict=False):
            if node.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise AssertionError(
                    f"{' '.join(node.args)} exited with {node.returncode}:\n{tail}"
                )
        if _nodes_alive(address, env) >= n:
            return
        time.sleep(2)
    raise AssertionError(f"the Ray cluster at {address} did not reach {n} nodes in 180 s")


def _stop(node: subprocess.Popen[bytes]) -> None:
    """Stop one node this test started: `ray start --block` shuts its processes down on
    SIGTERM. (`ray stop` would stop every Ray process of the machine, not only these.)"""
    if node.poll() is None:
        node.terminate()
        try:
            node.wait(timeout=60)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait(timeout=30)


def test_two_node_cluster_with_token_auth_gives_the_native_metrics(tmp_path: Path) -> None:
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    assert ray_cli, "the ray command is not installed (pip install -e '.[ray]')"
    port, node_port = _free_port(), _free_port()
    address = f"127.0.0.1:{port}"
    # Ray's socket paths must stay under 108 bytes: a short folder, not pytest's tmp_path.
    ray_tmp = tempfile.mkdtemp(prefix="metarl-ray-")
    env = {
        **os.environ,
        # The recipe: token authentication, the same token on every node and on the driver.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    common = ["--num-cpus", "1", "--disable-usage-stats", f"--temp-dir={ray_tmp}", "--block"]
    train = [
        sys.executable, "-m", "metarl.cli", "train", "--agent", "maml-trpo", "--preset", "quick",
        "--num-iterations", "2", "--meta-batch-size", "4", "--episodes-per-task", "4",
        "--num-threads", "1", "--no-tensorboard",
    ]  # fmt: skip
    nodes: list[subprocess.Popen[bytes]] = []
    log_paths = [tmp_path / f"node{i}.log" for i in range(2)]
    logs = [open(p, "wb") for p in log_paths]  # noqa: SIM115
    try:
        nodes.append(subprocess.Popen(
            [ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
             "--include-dashboard=false",
             *common],
            env=env, stdout=logs[0], stderr=subprocess.STDOUT))  # fmt: skip
        _wait_for_nodes(address, env, 1, nodes, log_paths)
        nodes.append(subprocess.Popen(
            [ray_cli, "start", f"--address={address}", "--node-ip-address=127.0.0.1",
             f"--node-manager-port={node_port}", *common],
            env=env, stdout=logs[1], stderr=subprocess.STDOUT))  # fmt: skip
        _wait_for_nodes(address, env, 2, nodes, log_paths)
        _run([*train, "--sampler", "ray", "--ray-workers", "2", "--ray-address", address,
              "--run-dir", str(tmp_path / "ray-run")], env, timeout=600)  # fmt: skip
    finally:
        for node in reversed(nodes):
            _stop(node)
        for log in logs:
            log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    _run([*train, "--sampler", "native", "--run-dir", str(tmp_path / "native-run")], env, 600)
    ray_rows, native_rows = _metrics(tmp_path / "ray-run"), _metrics(tmp_path / "native-run")
    assert len(native_rows) == 3  # the header and two iterations
    assert ray_rows == native_rows
