from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from metarl.evaluation import AdaptationCurve, mean_ci95, plot_curves


def test_mean_ci95_closed_form() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    mean, half = mean_ci95(x)
    # t_{0.975, 4} = 2.776; s = sqrt(2.5)
    assert mean == 3.0
    assert half == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5))
    big = np.random.default_rng(0).normal(size=1000)
    assert mean_ci95(big)[1] == pytest.approx(1.96 * big.std(ddof=1) / math.sqrt(1000))
    assert math.isnan(float(mean_ci95(np.array([1.0]))[1]))


def test_curve_summary_roundtrip_and_plot(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(-20, 2, size=(2, 40, 1))
    returns = np.concatenate([base, base + 5 + rng.normal(0, 1, size=(2, 40, 1))], axis=-1)
    curve = AdaptationCurve(
        "maml-trpo",
        "metarl/Navigation2D-v0",
        "gradient steps",
        returns,
        env_steps=[0, 4000],
        wall_clock_s=[0.0, 1.0],
    )
    assert curve.num_units == 1
    diff, half = curve.improvement(1)
    assert 4 < diff < 6 and half < 1
    s = curve.summary()
    assert s["num_seeds"] == 2 and s["num_tasks"] == 40 and len(s["mean"]) == 2
    path = curve.save(tmp_path / "curve.json")
    again = AdaptationCurve.load(path)
    np.testing.assert_array_equal(again.returns, curve.returns)
    png = plot_curves([curve, again], tmp_path / "curve.png")
    assert png.stat().st_size > 1000
    with pytest.raises(ValueError, match="num_seeds"):
        AdaptationCurve("a", "e", "episodes", np.zeros((3, 2)))
