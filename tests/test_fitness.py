"""The code fitness probe: which pseudonym codes the renderer is drawn first."""

from __future__ import annotations

import numpy as np
import pytest

from idmrag_plugin.errors import ModelLoadError
from idmrag_plugin.generation.fitness import CodeFitness
from idmrag_plugin.generation.renderer_lcm_generator import candidate_order


def _probe(dim: int = 4, seed: int = 0) -> CodeFitness:
    rng = np.random.default_rng(seed)
    return CodeFitness(rng.normal(size=dim), rng.uniform(0.5, 2.0, dim), rng.normal(size=dim), 0.3, 0.4)


def test_a_probe_round_trips_and_refuses_what_it_cannot_read(tmp_path):
    probe = _probe()
    codes = np.random.default_rng(1).normal(size=(6, 4))
    loaded = CodeFitness.load(probe.save(tmp_path / "fitness.safetensors"))
    np.testing.assert_allclose(loaded.probability(codes), probe.probability(codes), atol=1e-6)
    assert loaded.split == pytest.approx(0.4)
    np.testing.assert_array_equal(probe.likelier(codes), probe.probability(codes) >= 0.4)
    assert ((probe.probability(codes) > 0) & (probe.probability(codes) < 1)).all()
    with pytest.raises(ModelLoadError, match="4-d codes"):
        probe.probability(np.zeros((2, 5)))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="fit-code-fitness"):
        CodeFitness.load(tmp_path / "junk.safetensors")
    for bad in (CodeFitness(np.zeros(4), np.zeros(4), np.ones(4), 0.0, 0.5),
                CodeFitness(np.zeros(4), np.ones(4), np.ones(4), 0.0, 1.0)):
        bad.save(tmp_path / "bad.safetensors")
        with pytest.raises(ModelLoadError, match="malformed"):
            CodeFitness.load(tmp_path / "bad.safetensors")


def test_the_packaged_probe_is_checked_and_reads_the_packaged_code_lcm_s_candidates(default_generator, astronaut_crop):
    from idmrag_plugin.weights import CODE_FITNESS_FILE, packaged

    probe = CodeFitness.load(packaged(CODE_FITNESS_FILE))  # sha256 checked against the manifest
    assert default_generator.code_fitness_path == packaged(CODE_FITNESS_FILE)
    id_mu, _ = default_generator._encoded(astronaut_crop)
    candidates = default_generator.pseudonym_codes(id_mu[0], 0, 12)
    p = probe.probability(candidates)
    assert p.shape == (12,) and np.isfinite(p).all()
    assert p.std() > 0.01  # it tells codes apart
    np.testing.assert_array_equal(default_generator._likelier_fit(candidates), p >= probe.split)


def test_the_half_read_as_likelier_fit_is_drawn_first_among_equally_suited_candidates():
    """Suitability first (attribute mismatch, then tone), then the fitness probe's likelier half,
    then the least like the person; without a probe (every code likelier) the order is the old one."""
    mismatch = np.array([0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    off_tone = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    closeness = np.array([0.1, 0.2, 0.3, 0.4, 0.0, 0.0])
    likelier = np.array([0.1, 0.9, 0.05, 0.8, 0.6, 0.7]) >= 0.65
    order, suitability = candidate_order(mismatch, off_tone, likelier, closeness)
    # 0 is least like the person but read as unlikely fit: after 1 and 3 (its equals otherwise);
    # 4 (an attribute mismatch) and 5 (off tone) stay last whatever the probe reads
    assert order.tolist() == [1, 3, 0, 2, 5, 4]
    assert suitability.tolist() == [0, 0, 1, 1, 2, 3]
    plain, plain_suitability = candidate_order(mismatch, off_tone, np.ones(6, bool), closeness)
    assert plain.tolist() == [0, 1, 2, 3, 5, 4]
    assert plain_suitability.tolist() == [0, 0, 0, 0, 1, 2]


def test_fit_code_fitness_learns_a_probe_from_logged_drawings_and_refuses_too_little(tmp_path):
    """The command fits on logged drawings (here: fit when the code's first coordinate is
    high), only at the attempts whose candidates the code LCM ranks, and says when there is
    too little to fit on."""
    from idmrag_plugin.errors import InvalidImageError
    from idmrag_plugin.training.fit_code_fitness import main

    rng = np.random.default_rng(7)
    codes = rng.normal(size=(600, 8))
    attempt = np.tile([0, 1, 2, 5], 150)
    unfitness = np.where(codes[:, 0] > 0.3, 0.8, 1.4)
    unfitness[attempt == 5] = 0.5  # later attempts (the sampler's codes) are left out
    data = tmp_path / "logged.npz"
    np.savez(data, codes=codes, unfitness=unfitness, attempt=attempt, person=np.arange(600) // 6)
    main(["--data", str(data), "--output", str(tmp_path / "probe.safetensors"), "--C", "1.0"])
    probe = CodeFitness.load(tmp_path / "probe.safetensors")
    p = probe.probability(codes[attempt < 3])
    fit = unfitness[attempt < 3] <= 1.0
    assert p[fit].mean() > 0.7 and p[~fit].mean() < 0.3
    assert probe.split == pytest.approx(float(np.median(p)), abs=1e-6)  # half of the codes fitted on under it
    np.savez(data, codes=codes[:4], unfitness=unfitness[:4], attempt=attempt[:4], person=np.arange(4))
    with pytest.raises(InvalidImageError, match="too few"):
        main(["--data", str(data), "--output", str(tmp_path / "none.safetensors")])


def test_the_generator_logs_each_code_drawn_into_a_photo_with_its_unfitness(engine, astronaut):
    from idmrag_plugin import AnonymizerConfig, FaceAnonymizer

    engine = FaceAnonymizer(AnonymizerConfig(generator="renderer-lcm", cache_size=0), detector=engine.detector,
                            oracles=engine.oracles)
    engine.generator.drawing_log = []
    result = engine.anonymize(astronaut)
    log = engine.generator.drawing_log
    assert result.faces[0].method == "generated"
    assert len(log) >= result.faces[0].attempts
    for code, unfitness, attempt, _chosen in log:
        assert code.shape == (128,) and np.isfinite(unfitness) and 0 <= attempt < 8
    assert sum(chosen for *_, chosen in log) >= result.faces[0].attempts  # one chosen per pseudonym drawn
