"""Issue #20: a run directory from someone else is safe to open; one run directory, one
writer; every failure one line.

Symlinks planted at every name metarl writes, temporary names older versions wrote, hard links
and FIFOs; oversize and decompression-bomb checkpoints (peak memory measured); a second writer
beside a live run and a stale lock; a handed config.json asking for a Ray cluster; read-only
and full disks; and the command-line faults that printed tracebacks.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from metarl.cli import main
from metarl.runs import (
    CheckpointError,
    Run,
    RunLockedError,
    UnsafeRunDirError,
    load_checkpoint_file,
    rundir,
    save_checkpoint_file,
)
from metarl.runs.config import RunConfig, option
from metarl.testing import tally

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--meta-batch-size", "2", "--episodes-per-task", "2", "--hidden-sizes", "8",
        "--horizon", "10", "--no-tensorboard", "--checkpoint-every", "1"]  # fmt: skip
EVAL = ["--max-tasks", "1", "--seeds", "0", "--episodes", "1", "--steps", "1"]


@dataclass
class Cfg(RunConfig):
    lr: float = option(0.1, "step size", low=0.0, low_open=True)


def _one_line(err: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err


@pytest.fixture(scope="module")
def maml_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-iteration MAML-TRPO run (copied by each test that changes it)."""
    d = tmp_path_factory.mktemp("made") / "run"
    assert main(["train", "--agent", "maml-trpo", "--num-iterations", "2", "--run-dir",
                 str(d), *TINY]) == 0  # fmt: skip
    return d


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def _victim(tmp_path: Path) -> tuple[Path, bytes]:
    """A file outside the run (a shell start-up file, say) that must stay as it is."""
    v = tmp_path / "outside" / "victim"
    v.parent.mkdir(exist_ok=True)
    v.write_bytes(b"echo hello\n")
    return v, b"echo hello\n"


# -- 1. no write through a link ------------------------------------------------------------
COMMANDS = {
    "train --resume": lambda d: ["train", "--resume", str(d), "--num-iterations", "3"],
    "evaluate": lambda d: ["evaluate", str(d), *EVAL],
    "fewshot evaluate": lambda d: ["fewshot", "evaluate", str(d), "--num-episodes", "1"],
    "fewshot train --resume": lambda d: ["fewshot", "train", "--run-dir", str(d), "--resume"],
}


@pytest.mark.parametrize("name", rundir.WRITTEN_NAMES)
def test_a_symlink_at_any_written_name_is_refused(
    name: str, maml_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim, content = _victim(tmp_path)
    d = _copy(maml_run, tmp_path / "run")
    target = d / name
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    target.symlink_to(victim)
    for what, argv in COMMANDS.items():
        assert main(argv(d)) == 2, (name, what)
        err = capsys.readouterr().err
        _one_line(err)
        assert "symbolic link" in err and name in err, err
        assert victim.read_bytes() == content, (name, what)
        tally("symlink at a written name refused", name=name, command=what)


def test_stale_temporary_names_are_never_written_through(tmp_path: Path) -> None:
    """The names older versions wrote (``metrics.tmp``, ``eval_test.json.tmp``,
    ``benchmark_eval.tmp``) are links to a victim: truncating metrics, saving an evaluation
    and the benchmark cache write around them."""
    from metarl.cli.benchmark import _evaluate_cached
    from metarl.evaluation import AdaptationCurve
    from metarl.fewshot.evaluate import write_json

    victim, content = _victim(tmp_path)
    d = tmp_path / "r"
    run = Run.create(d, "toy", Cfg(tensorboard=False))
    for it in range(4):
        run.log(it, {"x": float(it)})
    run.save_checkpoint(2, {"w": torch.zeros(1)})
    run.close()
    tmps = [
        "metrics.tmp",
        "eval_test.json.tmp",
        "benchmark_eval.tmp",
        f".eval.json.{os.getpid()}.tmp",
    ]
    for name in tmps:
        (d / name).symlink_to(victim)
    run = Run.resume(d, "toy", Cfg(tensorboard=False))
    run.load_checkpoint()  # drops rows 2 and 3: a rewrite of metrics.csv
    run.log(2, {"x": 2.0, "y": 1.0})  # a new column: another rewrite
    run.close()
    assert [r["iteration"] for r in run.metrics()] == ["0", "1", "2"]
    curve = AdaptationCurve(agent="toy", env_id="e", split="test", unit="steps",
                            returns=[[[0.0, 1.0]]])  # fmt: skip
    curve.save(d / "eval_test.json")

    class Module:
        @staticmethod
        def evaluate(run_dir: Path, **_: object) -> tuple[AdaptationCurve, Path, Path]:
            return curve, run_dir, run_dir

    _evaluate_cached(Module, d, {"split": "test"})
    write_json(d / "eval.json", {"ok": 1})
    assert victim.read_bytes() == content
    assert all((d / n).is_symlink() for n in tmps)
    tally("stale temporary name not written through", len(tmps))


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_appends_refuse_links_and_fifos(tmp_path: Path, kind: str) -> None:
    victim, content = _victim(tmp_path)
    d = tmp_path / "r"
    run = Run.create(d, "toy", Cfg(tensorboard=False))
    run.log(0, {"x": 0.0})
    run.close()
    for name in ("metrics.csv", "resumes.jsonl"):
        (d / name).unlink(missing_ok=True)
        if kind == "symlink":
            (d / name).symlink_to(victim)
        elif kind == "hardlink":
            os.link(victim, d / name)
        else:
            os.mkfifo(d / name)
        with pytest.raises(UnsafeRunDirError, match=name):
            rundir.append(d / name, b"1,2\n")
        assert victim.read_bytes() == content
        tally("append through a link or FIFO refused", kind=kind)


# -- 2. bounded loads ----------------------------------------------------------------------
def _peak_mb(script: str, *args: str) -> tuple[float, str]:
    """Run ``script`` in a fresh Python; (its peak resident memory in MB, its stdout)."""
    # VmHWM, not ru_maxrss: the latter carries over the parent's peak across fork and exec.
    code = textwrap.dedent(script) + textwrap.dedent("""
        import re
        hwm = re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)
        print("peak_mb", int(hwm) / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         timeout=300, check=True).stdout  # fmt: skip
    peak = float(out.rsplit("peak_mb", 1)[1])
    return peak, out


def _stride0_envelope(path: Path, numel: int) -> None:
    """A well-formed envelope whose payload is a view of one byte repeated ``numel`` times:
    a small file that copying expands to ``numel`` bytes."""
    from metarl import runs

    envelope = {"kind": runs._KIND, "format": runs.CHECKPOINT_FORMAT, "metarl_version": "0",
                "agent": "toy", "task_family": None, "sha256": "0" * 64,
                "payload": torch.zeros(1, dtype=torch.uint8).expand(numel)}  # fmt: skip
    torch.save(envelope, path)


def _deflated(path: Path, size: int) -> None:
    """A torch zip archive whose tensor record is deflated: ``size`` zero bytes in a small
    file (a decompression bomb)."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(size, dtype=torch.uint8)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w") as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)


def test_a_stride0_payload_is_too_large(tmp_path: Path) -> None:
    path = tmp_path / "bomb.pt"
    _stride0_envelope(path, 50_000_000)
    assert path.stat().st_size < 10_000
    with pytest.raises(CheckpointError, match="too large for a metarl checkpoint"):
        load_checkpoint_file(path)
    tally("decompression-bomb checkpoint refused", kind="stride-0 payload")


def test_a_deflated_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.pt"
    _deflated(path, 20_000_000)
    assert path.stat().st_size < 100_000
    with pytest.raises(CheckpointError, match="compressed"):
        load_checkpoint_file(path)
    tally("decompression-bomb checkpoint refused", kind="deflated entry")


def test_an_oversize_file_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METARL_MAX_CHECKPOINT_MB", "1")
    path = tmp_path / "big.pt"
    with open(path, "wb") as f:  # sparse: no disk used
        f.truncate(2 << 20)
    with pytest.raises(CheckpointError, match="too large for a metarl checkpoint"):
        load_checkpoint_file(path)
    # A genuine checkpoint over the cap is refused too, and readable once the cap is raised.
    real = save_checkpoint_file(tmp_path / "ok.pt", {"w": torch.zeros(400_000)}, agent="toy")
    with pytest.raises(CheckpointError, match="METARL_MAX_CHECKPOINT_MB"):
        load_checkpoint_file(real)
    monkeypatch.setenv("METARL_MAX_CHECKPOINT_MB", "4")
    assert load_checkpoint_file(real)["w"].shape == (400_000,)
    tally("oversize checkpoint refused", kind="sparse file over the cap")


@pytest.mark.slow
def test_bombs_stay_within_bounded_memory(tmp_path: Path) -> None:
    """The attacks on run directories at full size, each in a fresh process: a 1.5 MB-class file
    whose payload expands to 3.4 GB, a 2 GB sparse file, a deflate bomb of 256 MB; peak
    memory measured (a process that only imports metarl and torch is the baseline)."""
    baseline, _ = _peak_mb("import metarl.runs")
    _stride0_envelope(tmp_path / "stride0.pt", 3_400_000_000)
    with open(tmp_path / "sparse.pt", "wb") as f:
        f.truncate(2 << 30)
    _deflated(tmp_path / "deflate.pt", 256 << 20)
    kinds = {
        "stride0": "stride-0 payload a copy expands to 3.4 GB",
        "sparse": "2 GB sparse file",
        "deflate": "deflated archive entry of 256 MB",
    }
    for name, kind in kinds.items():
        path = tmp_path / f"{name}.pt"
        peak, out = _peak_mb("""
            import sys
            from metarl.runs import CheckpointError, load_checkpoint_file
            try:
                load_checkpoint_file(sys.argv[1])
            except CheckpointError as e:
                print("refused:", e)
        """, str(path))  # fmt: skip
        assert "refused:" in out, out
        assert peak < baseline + 64, (name, peak, baseline)
        tally("bomb checkpoint peak memory", kind=kind, file_mb=path.stat().st_size / 2**20,
              peak_mb=round(peak, 1), baseline_mb=round(baseline, 1))  # fmt: skip


def test_zero_filled_checkpoint_is_corrupt_not_crafted(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(bytes(4096))
    with pytest.raises(CheckpointError, match="corrupted") as info:
        load_checkpoint_file(path)
    assert "crafted" not in str(info.value)


def test_checkpoint_that_is_a_directory(
    maml_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _copy(maml_run, tmp_path / "run")
    (d / "checkpoint.pt").unlink()
    (d / "checkpoint.pt").mkdir()
    assert main(["evaluate", str(d), *EVAL]) == 2
    err = capsys.readouterr().err
    _one_line(err)
    assert "checkpoint.pt" in err and "not a regular file" in err


# -- 3. one writer -------------------------------------------------------------------------
@contextlib.contextmanager
def _holder(d: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``d``'s lock, as a live run does."""
    code = ("import sys, time\nfrom metarl.runs.rundir import RunLock\n"
            "lock = RunLock(sys.argv[1])\n"
            "print('locked', flush=True)\ntime.sleep(120)\n")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code, str(d)], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_writer_is_refused_and_a_stale_lock_is_not(
    maml_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _copy(maml_run, tmp_path / "run")
    metrics = (d / "metrics.csv").read_bytes()
    with _holder(d) as proc:
        for argv in (
            ["train", "--resume", str(d), "--num-iterations", "3"],
            ["train", "--agent", "maml-trpo", "--run-dir", str(d), "--overwrite", *TINY],
        ):
            assert main(argv) == 1
            err = capsys.readouterr().err
            _one_line(err)
            assert f"in use by another metarl process (pid {proc.pid})" in err, err
            tally("second writer refused naming the holder")
        assert (d / "metrics.csv").read_bytes() == metrics
        # A reader is not a writer: evaluate works beside the live run, and leaves its log.
        assert main(["evaluate", str(d), *EVAL]) == 0
        capsys.readouterr()
        assert (d / "metrics.csv").read_bytes() == metrics
    # The holder was SIGKILLed: the kernel dropped its lock, the resume goes on.
    assert main(["train", "--resume", str(d), "--num-iterations", "3"]) == 0
    assert [r["iteration"] for r in Run(d, "maml-trpo", Cfg()).metrics()] == ["0", "1", "2"]
    tally("stale lock of a killed process did not block resume")


def test_a_reader_leaves_a_live_runs_metrics(tmp_path: Path) -> None:
    """Loading a checkpoint to evaluate (``metarl fewshot evaluate``) must not drop the rows
    a live run logged after it."""
    run = Run.create(tmp_path / "r", "toy", Cfg(tensorboard=False))
    run.save_checkpoint(1, {"w": torch.zeros(1)})
    for it in range(3):
        run.log(it, {"x": float(it)})
    Run(tmp_path / "r", "toy", Cfg(tensorboard=False)).load_checkpoint()
    assert len(run.metrics()) == 3
    run.close()


@pytest.mark.slow
def test_two_processes_resuming_one_run(maml_run: Path, tmp_path: Path) -> None:
    d = _copy(maml_run, tmp_path / "run")
    # 28 iterations: long enough for the second process to arrive while the first writes.
    cmd = [
        sys.executable,
        "-m",
        "metarl.cli",
        "train",
        "--resume",
        str(d),
        "--num-iterations",
        "30",
    ]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    results = [(p.wait(timeout=600), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    err = next(e for code, e in results if code == 1)
    assert "in use by another metarl process" in err and "Traceback" not in err
    its = [r["iteration"] for r in Run(d, "maml-trpo", Cfg()).metrics()]
    assert its == [str(i) for i in range(30)], its
    tally("concurrent writers: one ran, one refused, log intact")


# -- 4. a handed config.json does not decide where the process connects ----------------------
def test_a_handed_ray_address_is_not_followed(
    maml_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _copy(maml_run, tmp_path / "run")
    record = json.loads((d / "config.json").read_text())
    record["config"].update(sampler="ray", ray_address="attacker.example:6379")
    (d / "config.json").write_text(json.dumps(record))
    assert main(["train", "--resume", str(d), "--num-iterations", "3"]) == 2
    err = capsys.readouterr().err
    _one_line(err)
    assert "--sampler ray --ray-address attacker.example:6379" in err, err
    assert "ray" not in sys.modules or "attacker" not in str(sys.modules.get("ray"))
    # Given on the command line, the choice is the user's: here the native sampler.
    assert main(["train", "--resume", str(d), "--num-iterations", "3", "--sampler", "native",
                 "--ray-address", ""]) == 0  # fmt: skip
    tally("hostile config.json field refused", 2)


# -- 5. every failure one line -------------------------------------------------------------
def test_run_dir_that_is_a_file_or_under_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    for d in (f, f / "run"):
        argv = ["train", "--agent", "maml-trpo", "--num-iterations", "1", "--run-dir", str(d)]
        assert main([*argv, *TINY]) == 2
        err = capsys.readouterr().err
        _one_line(err)
        assert "file" in err and "run directory" in err, err
        assert main(["evaluate", str(d)]) == 2
        _one_line(capsys.readouterr().err)
    assert f.read_text() == "x"


def test_a_new_run_into_an_existing_one_names_overwrite(
    maml_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _copy(maml_run, tmp_path / "run")
    argv = ["train", "--agent", "maml-trpo", "--num-iterations", "1", "--run-dir", str(d), *TINY]
    assert main(argv) == 2
    err = capsys.readouterr().err
    _one_line(err)
    assert "already holds a run" in err and "--overwrite" in err and "--resume" in err
    assert main([*argv, "--overwrite"]) == 0


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs (root only)."""
    d = tmp_path / "disk"
    d.mkdir()
    if os.geteuid() != 0 or subprocess.call(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                                             str(d)], stderr=subprocess.DEVNULL) != 0:  # fmt: skip
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield d
    finally:
        subprocess.call(["umount", "-l", str(d)])


def test_evaluate_on_a_read_only_disk_fails_before_the_work(
    maml_run: Path,
    tiny_disk: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = _copy(maml_run, tiny_disk / "run")
    assert subprocess.call(["mount", "-o", "remount,ro", str(tiny_disk)]) == 0
    import metarl.agents.maml_trpo as maml

    def no_work(*a: object, **k: object) -> None:
        raise AssertionError("evaluated before checking the directory is writable")

    monkeypatch.setattr(maml, "evaluate", no_work)
    assert main(["evaluate", str(d), *EVAL]) == 1
    err = capsys.readouterr().err
    _one_line(err)
    assert "read-only" in err, err
    assert main(["fewshot", "evaluate", str(d), "--num-episodes", "1"]) == 1
    err = capsys.readouterr().err
    _one_line(err)
    assert "read-only" in err, err
    assert main(["train", "--resume", str(d), "--num-iterations", "3"]) == 1
    err = capsys.readouterr().err
    _one_line(err)
    assert "read-only" in err, err
    tally("read-only disk: one line, before the work", 3)


def test_a_full_disk_keeps_the_last_checkpoint(
    maml_run: Path, tiny_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _copy(maml_run, tiny_disk / "run")
    ckpt = (d / "checkpoint.pt").read_bytes()
    free = shutil.disk_usage(tiny_disk).free
    (tiny_disk / "filler").write_bytes(bytes(max(free - 4096, 0)))
    assert main(["train", "--resume", str(d), "--num-iterations", "3"]) == 1
    err = capsys.readouterr().err
    _one_line(err)
    assert "disk is full" in err and "resumes" in err, err
    assert (d / "checkpoint.pt").read_bytes() == ckpt
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]
    (tiny_disk / "filler").unlink()
    assert main(["train", "--resume", str(d), "--num-iterations", "3"]) == 0
    tally("full disk: one line, last checkpoint kept")


def test_a_full_disk_without_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC from the file system (simulated where no tmpfs can be mounted)."""
    run = Run.create(tmp_path / "r", "toy", Cfg(tensorboard=False))
    run.save_checkpoint(1, {"w": torch.zeros(1)})
    before = run.checkpoint_path.read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        run.save_checkpoint(2, {"w": torch.ones(1)})
    monkeypatch.undo()
    assert run.checkpoint_path.read_bytes() == before
    assert not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]
    run.close()


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["evaluate", "RUN", "--max-tasks", "-1"], 2, "--max-tasks must be >= 1"),
        (["evaluate", "RUN", "--max-tasks", "0"], 2, "--max-tasks must be >= 1"),
        (["evaluate", "RUN", "--seeds", "-1"], 2, "--seeds must be integers from 0"),
        (["evaluate", "RUN", "--seeds", str(2**70)], 2, "--seeds must be integers from 0"),
        (["train", "--agent", "maml-trpo", "--seed", str(2**70)], 2, r"seed \(--seed\) must be <="),
        (["fewshot", "train", "--seed", str(2**70)], 2, r"seed \(--seed\) must be <="),
        (["check-env", "metarl/Navigation2D-v0", "--seed", str(2**70)], 2, "--seed must be"),
        (
            ["benchmark", "--agents", "maml-trpo", "--envs", "e", "--steps", "-1"],
            2,
            "--steps must be >= 0",
        ),
    ],
)
def test_counts_and_seeds_are_validated(
    argv: list[str], code: int, message: str, maml_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(maml_run) if a == "RUN" else a for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err
    _one_line(err)
    assert message in err or __import__("re").search(message, err), err
    tally("bad command line refused")


def test_an_allocator_failure_is_one_line(tmp_path: Path) -> None:
    """``--meta-batch-size 1000000000`` asks for tens of GB; the process is capped at 6 GB
    of address space so the allocation fails at once, as it does on a smaller machine."""
    code = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))\n"
            "from metarl.cli import main\nsys.exit(main(sys.argv[1:]))\n")  # fmt: skip
    argv = ["train", "--agent", "maml-trpo", "--meta-batch-size", "1000000000",
            "--num-iterations", "1", "--run-dir", str(tmp_path / "r")]  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    _one_line(proc.stderr)
    assert "ran out of memory" in proc.stderr and "--meta-batch-size" in proc.stderr


def test_ctrl_c_names_the_checkpoint_and_how_to_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "run"
    real_log = Run.log

    def log(self: Run, iteration: int, metrics: dict[str, float]) -> None:
        if iteration == 2:
            raise KeyboardInterrupt
        real_log(self, iteration, metrics)

    monkeypatch.setattr(Run, "log", log)
    argv = ["train", "--agent", "maml-trpo", "--num-iterations", "4", "--run-dir", str(d), *TINY]
    assert main(argv) == 130
    err = capsys.readouterr().err
    _one_line(err)
    assert f"{d / 'checkpoint.pt'}" in err and f"metarl train --resume {d}" in err, err
    monkeypatch.undo()
    assert main(["train", "--resume", str(d), "--num-iterations", "4"]) == 0


def test_a_fewshot_run_stopped_before_its_first_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "fs"
    argv = ["fewshot", "train", "--preset", "maml-sinusoid", "--num-iterations", "2",
            "--checkpoint-every", "2", "--run-dir", str(d), "--no-tensorboard",
            "--num-eval-episodes", "2"]  # fmt: skip
    monkeypatch.setattr(Run, "save_checkpoint", lambda *a, **k: (_ for _ in ()).throw(
        KeyboardInterrupt))  # fmt: skip
    assert main(argv) == 130
    err = capsys.readouterr().err
    _one_line(err)
    assert "before the first checkpoint" in err and "--overwrite" in err, err
    monkeypatch.undo()
    assert main([*argv[:2], "--run-dir", str(d), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err
    assert main([*argv, "--overwrite"]) == 0  # the flag it advises exists


def test_a_nan_stop_advises_a_new_run_directory() -> None:
    from metarl.numerics import NonFiniteError, at_iteration

    msg = at_iteration(NonFiniteError("non-finite loss; lower --inner-lr", "loss"), 3, "c.pt")
    assert "new run directory" in msg


def test_torch_is_new_enough_to_refuse_pickles() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert '"torch>=2.6"' in text  # torch <= 2.5.1 could run code despite weights_only=True


# -- generated run directories: no write ever lands outside ---------------------------------
_KINDS = ("absent", "file", "empty", "dir", "link-file", "link-dir", "link-dangling",
          "hardlink", "fifo")  # fmt: skip
_STALE = ("metrics.tmp", "eval_test.json.tmp", "benchmark_eval.tmp", ".checkpoint.pt.0.tmp")


def _snapshot(root: Path) -> dict[str, object]:
    """Everything under ``root``: file bytes, link targets, directory names."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            elif p.is_file():
                out[str(p)] = ("file", p.read_bytes(), p.stat().st_mtime_ns)
            else:
                out[str(p)] = ("other", p.stat().st_mode)
    return out


def _plant(d: Path, name: str, kind: str, outside: Path, size: int) -> None:
    p = d / name
    if os.path.lexists(p):
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    if kind == "file":
        p.write_bytes(os.urandom(size))
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "dir":
        p.mkdir()
    elif kind == "link-file":
        p.symlink_to(outside / "victim")
    elif kind == "link-dir":
        p.symlink_to(outside)
    elif kind == "link-dangling":  # O_CREAT through it would create a file outside
        p.symlink_to(outside / f"created-{name}")
    elif kind == "hardlink":
        os.link(outside / "victim", p)
    elif kind == "fifo":
        os.mkfifo(p)


def _attempt(op: object) -> None:
    from metarl.runs import RunMismatchError
    from metarl.runs.config import ConfigError

    expected = (UnsafeRunDirError, CheckpointError, RunMismatchError, RunLockedError,
                ConfigError, ValueError, KeyError, FileExistsError, FileNotFoundError,
                NotADirectoryError, IsADirectoryError, UnicodeDecodeError)  # fmt: skip
    with contextlib.suppress(*expected):
        op()  # type: ignore[operator]


@pytest.mark.filterwarnings("ignore")
def test_generated_run_directories_never_write_outside() -> None:
    import tempfile

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from metarl.cli.benchmark import _evaluate_cached
    from metarl.evaluation import AdaptationCurve
    from metarl.fewshot.evaluate import write_json

    names = st.sampled_from((*rundir.WRITTEN_NAMES, *_STALE, "random.bin"))
    plantings = st.lists(st.tuples(names, st.sampled_from(_KINDS), st.integers(0, 4096)),
                         max_size=6)  # fmt: skip
    curve = AdaptationCurve(agent="toy", env_id="e", split="test", unit="steps",
                            returns=[[[0.0, 1.0]]])  # fmt: skip

    class Module:
        @staticmethod
        def evaluate(run_dir: Path, **_: object) -> tuple[AdaptationCurve, Path, Path]:
            return curve, run_dir, run_dir

    @settings(max_examples=120, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(plantings, st.booleans())
    def check(planted: list[tuple[str, str, int]], overwrite: bool) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            outside, d = Path(tmp) / "outside", Path(tmp) / "run"
            (outside / "sub").mkdir(parents=True)
            (outside / "victim").write_bytes(b"echo hello\n")
            run = Run.create(d, "toy", Cfg(tensorboard=False))
            run.log(0, {"x": 0.0})
            run.save_checkpoint(1, {"w": torch.zeros(2)})
            run.log(1, {"x": 1.0})
            run.close()
            for name, kind, size in planted:
                _plant(d, name, kind, outside, size)
            before = _snapshot(outside)

            def resume() -> None:
                r = Run.resume(d, "toy", Cfg(tensorboard=False, num_iterations=600))
                try:
                    r.load_checkpoint()
                    r.log(1, {"x": 1.0, "y": 2.0})
                    r.save_checkpoint(2, {"w": torch.ones(2)})
                finally:
                    r.close()

            def create() -> None:
                Run.create(d, "toy", Cfg(tensorboard=False), overwrite=overwrite).close()

            for op in (
                resume,
                lambda: Run.read_resumes(d),
                lambda: Run(d, "toy", Cfg(tensorboard=False)).metrics(),
                lambda: curve.save(d / "eval_test.json"),
                lambda: write_json(d / "eval.json", {"ok": 1}),
                lambda: _evaluate_cached(Module, d, {"split": "test"}),
                lambda: load_checkpoint_file(d / "checkpoint.pt"),
                create,
            ):
                _attempt(op)
            assert _snapshot(outside) == before, planted
            tally("generated run directory: no write outside")

    check()
