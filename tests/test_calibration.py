from __future__ import annotations

import numpy as np
import pytest

from idmrag_plugin.calibration import calibrate, impostor_similarities, threshold_at
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
    names = [f"P{i:04d}" for i in range(400)]
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
