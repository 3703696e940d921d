from __future__ import annotations

import numpy as np
import pytest

from idmrag_plugin.calibration import (
    calibrate,
    impostor_similarities,
    threshold_at,
    threshold_at_far,
)
from idmrag_plugin.errors import CalibrationError


def test_threshold_at_leaves_the_requested_fraction_above():
    sims = np.random.default_rng(0).normal(0, 1, 100_000)
    t = threshold_at(sims, 1e-2)
    assert abs(np.mean(sims >= t) - 1e-2) < 1e-3


def test_threshold_needs_enough_pairs():
    with pytest.raises(CalibrationError):
        threshold_at(np.zeros(100), 1e-3)


def test_impostor_pairs_exclude_same_label():
    emb = np.eye(3)
    sims = impostor_similarities(emb, ["a", "a", "b"])
    assert sims.size == 2


def test_calibrate_on_a_synthetic_lfw_tree(tmp_path):
    """Identity-clustered random embeddings: genuine pairs pass, held-out FAR near target."""
    rng = np.random.default_rng(1)
    names = [f"P{i:04d}" for i in range(1000)]
    centers = {n: rng.standard_normal(64) for n in names}
    lines = []
    for name in names:
        folder = tmp_path / "images" / name
        folder.mkdir(parents=True)
        for k in (1, 2):
            (folder / f"{name}_{k:04d}.jpg").write_bytes(b"x")
        lines.append(f"{name}\t1\t2")
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")

    def embed(paths):
        out = {}
        for p in paths:
            v = centers[p.parent.name] + 0.3 * rng.standard_normal(64)
            out[p] = v / np.linalg.norm(v)
        return {"toy": out}

    report = calibrate(tmp_path, embed, ["toy"], identities_per_half=200)
    entry = report["oracles"]["toy"]
    assert entry["genuine_tar"]["far1e-2"] > 0.95
    assert entry["held_out_far"]["far1e-2"] < 0.03
    assert entry["thresholds"]["far1e-3"] > entry["thresholds"]["far1e-2"]
    # 19,900 impostor pairs per half measure FAR 1e-3 (20 pairs above), not the tail's 1e-4 or 1e-5;
    # about 120,000 measure 1e-4 too
    assert set(entry["thresholds"]) == {"far1e-2", "far1e-3"}
    tail = calibrate(tmp_path, embed, ["toy"], identities_per_half=500)["oracles"]["toy"]
    assert tail["fit_impostor_pairs"] > 100_000
    assert set(tail["thresholds"]) == {"far1e-2", "far1e-3", "far1e-4"}
    assert tail["thresholds"]["far1e-4"] > tail["thresholds"]["far1e-3"] > tail["thresholds"]["far1e-2"]


def test_threshold_at_far_interpolates_the_calibrated_tail_and_clamps_to_it():
    calibration = {"oracles": {"toy": {"thresholds": {"far1e-2": 0.90, "far1e-3": 0.92, "far1e-5": 0.96}}}}
    assert threshold_at_far("toy", 1e-2, calibration) == pytest.approx(0.90)
    assert threshold_at_far("toy", 10**-2.5, calibration) == pytest.approx(0.91)
    assert threshold_at_far("toy", 1e-4, calibration) == pytest.approx(0.94)  # log-linear between 1e-3 and 1e-5
    assert threshold_at_far("toy", 0.5, calibration) == pytest.approx(0.90)  # clamped to the calibrated range
    assert threshold_at_far("toy", 1e-9, calibration) == pytest.approx(0.96)
    with pytest.raises(CalibrationError, match="idmrag calibrate"):
        threshold_at_far("other", 1e-3, calibration)
