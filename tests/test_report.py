"""The shared benchmark-report helper: provenance that names the machine and the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metarl.evaluation.report import Provenance, describe_machine, machine, write_report


def test_machine_names_cores_cpu_and_threads() -> None:
    m = machine(threads=3)
    assert m["cores"] >= 1 and m["threads"] == 3 and m["gpu"] is None
    text = describe_machine(m)
    assert text.startswith(f"{m['cores']}-core CPU") and "no GPU" in text
    assert "3 torch threads" in text


def test_write_report_writes_both_files_with_provenance(tmp_path: Path) -> None:
    prov = Provenance(threads=1)
    js, md = write_report("speed", {"ratio": 2.5}, ["# Speed", "", prov.header()], tmp_path, prov)
    data = json.loads(js.read_text())
    assert data["ratio"] == 2.5
    assert data["provenance"]["machine"]["threads"] == 1
    assert data["provenance"]["command"].startswith("python ")
    assert md.read_text().startswith("# Speed\n") and "1 torch thread," in md.read_text()


@pytest.mark.parametrize("name", ["", "../escape", "a/b"])
def test_write_report_refuses_a_path_as_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="plain file stem"):
        write_report(name, {}, "x", tmp_path)


def test_provenance_names_the_command_and_the_load_on_both_sides() -> None:
    from metarl.evaluation.report import Provenance, load_average

    prov = Provenance(threads=1, argv=["--iterations", "2"])
    assert prov.command.startswith("python ") and prov.command.endswith(" --iterations 2")
    record = prov.finish()
    assert record["command"] == prov.command and record["machine"]["threads"] == 1
    if load_average() is not None:
        text = prov.describe_load()
        assert text.startswith("load average ") and " before, " in text and text.endswith(" after")
