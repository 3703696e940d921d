"""The benchmark: metric functions on cases with known answers, the evaluation set, the method
registry, and one end-to-end run on photos that ship with scikit-image."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from idmrag_plugin.bench import BenchConfig, build_method, metrics, run_benchmark
from idmrag_plugin.bench.dataset import load_evaluation_set
from idmrag_plugin.bench.reporting import write_results
from idmrag_plugin.cli import main as cli_main
from idmrag_plugin.errors import ConfigError

# ----------------------------------------------------------------------------- metrics


def _unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_reidentification_of_an_unchanged_face_is_perfect_and_of_a_wrong_face_is_zero():
    gallery = _unit_rows(10, 64, 0)
    ids = [f"id{i}" for i in range(10)]
    assert metrics.reidentification_rates(gallery, ids, gallery, ids) == {1: 1.0, 5: 1.0}
    shifted = ids[1:] + ids[:1]  # every probe carries the face of the next identity
    rates = metrics.reidentification_rates(gallery, shifted, gallery, ids)
    assert rates[1] == 0.0


def test_reidentification_takes_the_best_gallery_photo_per_identity():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    gallery_ids = ["a", "b", "b"]
    probe = np.array([[0.5, 0.866]])  # nearest to b's second photo
    assert metrics.reidentification_rates(probe, ["b"], gallery, gallery_ids, ks=(1,)) == {1: 1.0}
    assert metrics.reidentification_rates(probe, ["a"], gallery, gallery_ids, ks=(1, 2)) == {1: 0.0, 2: 1.0}


def test_identical_outputs_do_not_count_as_reidentified():
    """A method that turns every face into the same blob ties all identities: no credit."""
    gallery = np.ones((4, 8))
    probes = np.ones((4, 8))
    ids = ["a", "b", "c", "d"]
    rates = metrics.reidentification_rates(probes, ids, gallery, ids, ks=(1, 4))
    assert rates == {1: 0.0, 4: 1.0}


def test_chance_rate():
    assert metrics.chance_rate(300, 1) == pytest.approx(1 / 300)
    assert metrics.chance_rate(300, 5) == pytest.approx(5 / 300)
    assert metrics.chance_rate(3, 5) == 1.0


def test_verification_rate_at_a_threshold():
    a = _unit_rows(20, 16, 1)
    assert metrics.verification_rate(a, a, 0.99) == 1.0
    assert metrics.verification_rate(a, -a, 0.0) == 0.0
    half = np.concatenate([a[:10], -a[10:]])
    assert metrics.verification_rate(a, half, 0.5) == 0.5


def test_frechet_distance_known_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 3))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # a mean shift of 2 along one axis: distance 4
    assert metrics.frechet_distance(a, a + [2.0, 0.0, 0.0]) == pytest.approx(4.0, abs=1e-6)
    # N(0, I) vs N(0, 4I) in 3-d: 3 * (1 + 4 - 2 * 2) = 3
    assert metrics.frechet_distance(a, 2.0 * rng.normal(size=(20000, 3))) == pytest.approx(3.0, rel=0.05)


def test_frechet_distance_with_fewer_samples_than_dimensions_is_finite():
    a, b = _unit_rows(30, 128, 2), _unit_rows(30, 128, 3)
    value = metrics.frechet_distance(a, b)
    assert math.isfinite(value) and value > 0


def _face68(scale: float = 1.0) -> np.ndarray:
    pts = np.random.default_rng(4).uniform(0, 100, size=(68, 2))
    pts[36:42] = [0.0, 0.0]
    pts[42:48] = [50.0 * scale, 0.0]
    return pts


def test_landmark_error_is_in_interocular_units():
    ref = _face68()
    assert metrics.interocular_distance(ref) == pytest.approx(50.0)
    assert metrics.landmark_error(ref, ref) == 0.0
    assert metrics.landmark_error(ref, ref + [30.0, 40.0]) == pytest.approx(1.0)  # moved by 50 px = 1 IOD
    with pytest.raises(ValueError):
        metrics.landmark_error(ref, ref[:5])


def test_consistency_rates():
    a = _unit_rows(6, 32, 5)
    assert metrics.same_person_rate(a, a, 0.9) == 1.0
    assert metrics.distinct_people_rate(a, list("abcdef"), 0.9) == 1.0
    same = np.repeat(a[:1], 6, axis=0)  # every pseudonym collapsed onto one face
    assert metrics.distinct_people_rate(same, list("abcdef"), 0.9) == 0.0
    # pairs of the same identity are not counted as "different people"
    assert math.isnan(metrics.distinct_people_rate(same, list("aaaaaa"), 0.9))


# ----------------------------------------------------------------------------- evaluation set


def _identity_folders(root: Path, counts: dict[str, int]) -> Path:
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(root / name / f"{name}_{i:04d}.jpg")
    return root


def test_evaluation_set_uses_identities_with_two_photos_and_keeps_probe_out_of_gallery(tmp_path):
    root = _identity_folders(tmp_path / "images", {"a": 3, "b": 2, "c": 1, "d": 5})
    evalset = load_evaluation_set(tmp_path, limit=None, gallery_per_identity=2, seed=1)
    assert evalset.root == root
    assert sorted(evalset.identities) == ["a", "b", "d"]  # c has a single photo
    probe_paths = {p.path for p in evalset.probes}
    assert not probe_paths & {g.path for g in evalset.gallery}
    assert len([g for g in evalset.gallery if g.identity == "d"]) == 2
    for probe in evalset.probes:
        assert evalset.companions[probe.identity].identity == probe.identity
        assert evalset.companions[probe.identity].path != probe.path
    again = load_evaluation_set(tmp_path, limit=2, gallery_per_identity=2, seed=1)
    assert len(again.probes) == 2
    assert again.probes == load_evaluation_set(tmp_path, limit=2, gallery_per_identity=2, seed=1).probes


def test_evaluation_set_refuses_unusable_folders(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        load_evaluation_set(tmp_path / "missing")
    _identity_folders(tmp_path / "x", {"a": 2, "b": 1})
    with pytest.raises(ConfigError, match="at least 2"):
        load_evaluation_set(tmp_path / "x")


def test_method_registry_rejects_unknown_names_and_steps():
    assert build_method("blur").name == "blur"
    with pytest.raises(ConfigError, match="unknown method"):
        build_method("gan")
    with pytest.raises(ConfigError, match="no sampling steps"):
        build_method("blur@4")
    with pytest.raises(ConfigError, match="integer"):
        build_method("blur@x")


def test_cli_reports_a_bad_method_before_loading_anything(tmp_path, capsys):
    assert cli_main(["bench", "--data", str(tmp_path), "--methods", "original,gan"]) == 2


def test_bench_threads_are_set_for_the_whole_run_and_checked(tmp_path, caplog):
    """``idmrag bench --threads N`` sets torch's thread count before any engine is built (two
    benches sharing the CPU with torch's default threads thrash); 0 is refused clearly."""
    import torch

    before = torch.get_num_threads()
    try:
        assert cli_main(["bench", "--data", str(tmp_path), "--methods", "original,gan", "--threads", "1"]) == 2
        assert torch.get_num_threads() == 1
        assert cli_main(["bench", "--data", str(tmp_path), "--threads", "0"]) == 2
        assert "--threads must be at least 1" in caplog.text
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def two_people(tmp_path_factory, astronaut, camera) -> Path:
    """Two identities with two photos each: the original and a re-framed, re-exposed copy."""
    root = tmp_path_factory.mktemp("people")
    for name, image in (("astronaut", astronaut), ("cameraman", camera)):
        (root / name).mkdir()
        Image.fromarray(image).save(root / name / "photo_0001.png")
        variant = np.clip(image[20:492, 10:482].astype(np.float32) * 0.9 + 10, 0, 255).astype(np.uint8)
        Image.fromarray(variant).resize((500, 500)).save(root / name / "photo_0002.png")
    return root


@pytest.fixture(scope="module")
def bench_results(two_people):
    config = BenchConfig(data=two_people, methods=("original", "mask", "blur"), limit=None,
                         consistency=2, progress=False)
    return run_benchmark(config)


def test_identity_preserving_method_scores_maximal_reidentification(bench_results):
    original = bench_results.summary["methods"]["original"]
    for oracle in ("dlib", "facenet"):
        assert original["privacy"][oracle]["verified_as_original"] == 1.0
        assert original["privacy"][oracle]["top1"] == 1.0
    assert original["utility"]["still_a_face"] == 1.0
    assert original["utility"]["landmark_error_iod"] == 0.0


def test_mask_scores_zero_detection_and_zero_verification(bench_results):
    mask = bench_results.summary["methods"]["mask"]
    assert mask["utility"]["still_a_face"] == 0.0
    for oracle in ("dlib", "facenet"):
        assert mask["privacy"][oracle]["verified_as_original"] == 0.0
    assert mask["utility"]["landmark_error_iod"] > 0.05
    assert mask["faces"]["fail_closed_rate"] is None  # not a generator


def test_results_are_written_as_strict_json_markdown_and_pictures(bench_results, tmp_path):
    summary = bench_results.summary
    assert summary["dataset"]["identities"] == 2 and summary["dataset"]["probes"] == 2
    assert summary["chance"]["top1"] == 0.5
    assert summary["environment"]["versions"]["torch"]
    paths = write_results(bench_results, tmp_path)
    parsed = json.loads(paths["json"].read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert set(parsed["methods"]) == {"original", "mask", "blur"}
    table = paths["markdown"].read_text()
    for name in ("original", "mask", "blur"):
        assert f"| {name} |" in table
    grid = Image.open(paths["grid"])
    assert grid.size == (4 * 112, 16 + 2 * 112)  # input + three methods; astronaut and cameraman
    if "plot" in paths:
        assert Image.open(paths["plot"]).size[0] > 0


def test_readme_block_is_replaced_and_nothing_else(bench_results, tmp_path):
    from idmrag_plugin.bench.reporting import README_END, README_START, update_readme

    paths = write_results(bench_results, tmp_path / "results")
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{README_START}\nold table\n{README_END}\nafter\n")
    update_readme(readme, paths)
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n") and text.endswith(f"{README_END}\nafter\n")
    assert "old table" not in text and "| mask |" in text and "(results/bench_grid.png)" in text
    (tmp_path / "plain.md").write_text("no markers")
    with pytest.raises(ConfigError):
        update_readme(tmp_path / "plain.md", paths)


def test_generator_methods_are_reproducible(astronaut):
    """Seeds are fixed: two fresh instances of a generator method give the same pixels."""
    first, second = build_method("vae-decode"), build_method("vae-decode")
    assert np.array_equal(first.run(astronaut).pixels, second.run(astronaut).pixels)


def test_faces_cut_by_the_frame_are_told_apart():
    from idmrag_plugin.bench.runner import _rate, cut_by_frame

    shape = (250, 250, 3)
    assert not cut_by_frame((80.0, 60.0, 170.0, 190.0), shape)
    assert not cut_by_frame((-0.5, 0.0, 250.5, 100.0), shape)  # a box touching the edge is not cut
    assert cut_by_frame((235.0, 97.0, 285.0, 167.0), shape)  # eyes past the right edge
    assert cut_by_frame((3.0, -48.0, 86.0, 69.0), shape)
    assert _rate(["generated", "obfuscated", "generated", "generated"]) == 0.25
    assert np.isnan(_rate([]))


def test_a_generator_s_fail_closed_rate_is_split_by_the_frame(two_people, tmp_path):
    config = BenchConfig(data=two_people, methods=("vae-decode",), limit=None, consistency=0, grid=False,
                         age_gender=False, progress=False)
    results = run_benchmark(config)
    faces = results.summary["methods"]["vae-decode"]["faces"]
    assert faces["reported"] >= 2 and faces["cut_by_frame"] == 0  # both subjects lie whole in their photos
    assert faces["fail_closed_in_frame"] == faces["fail_closed_rate"]
    assert np.isnan(faces["fail_closed_cut_by_frame"])
    table = write_results(results, tmp_path)["markdown"].read_text()
    assert "Fail-closed among faces whole in the frame / cut by it: vae-decode" in table
