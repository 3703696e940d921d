"""The pseudonym-code diffusion model and its LCM on tiny randomly initialised configs:
persistence, deterministic sampling, training with resume, conditioning that shows in the
samples, and the renderer-lcm generator's rules."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from idmrag_plugin import (
    AnonymizerConfig,
    ConfigError,
    FaceAnonymizer,
    GenerationRequest,
    ModelLoadError,
)
from idmrag_plugin.generation.attributes import (
    GROUP_LABELS,
    READING_DECIMALS,
    AttributeProbes,
    Reading,
    face_lightness,
)
from idmrag_plugin.generation.code_diffusion import (
    GROUP_SCALE,
    CodeDiffusion,
    CodeDiffusionConfig,
    condition_of,
    generator_for,
    sample_codes,
)
from idmrag_plugin.generation.encoder import CodesConfig, DisentangledFaceVAE
from idmrag_plugin.generation.identity_student import IdentityStudent
from idmrag_plugin.generation.renderer import FaceRenderer, RendererConfig
from idmrag_plugin.generation.renderer_generator import WIDER_MASK_FROM_ATTEMPT
from idmrag_plugin.generation.renderer_lcm_generator import CANDIDATES, RendererLCMGenerator
from idmrag_plugin.generation.sampler import IdentitySampler, pseudonym_key

ID_DIM = 16
HELD_OUT = 32  # faces of the tiny dataset's "val" split
THIRTY = float(np.log1p(30.0))


@pytest.fixture(autouse=True)
def _unfit_attempts_kept(unfit_attempts_kept):
    """Every least unfit drawing kept here (see conftest.unfit_attempts_kept)."""


def test_round_trip_and_deterministic_sampling(tmp_path):
    torch.manual_seed(0)
    model = CodeDiffusion(CodeDiffusionConfig(kind="lcm", id_dim=ID_DIM, hidden=32, blocks=1,
                                              code_mean=[0.5] * ID_DIM, code_std=[2.0] * ID_DIM))
    for p in model.parameters():  # the output layer starts at zero; make the test see a real network
        torch.nn.init.normal_(p, std=0.1)
    model.save_pretrained(tmp_path / "lcm")
    loaded = CodeDiffusion.from_pretrained(tmp_path / "lcm")
    assert loaded.config.code_std == [2.0] * ID_DIM
    cond = condition_of([Reading(True, THIRTY), Reading(False, 4.0)])
    a = sample_codes(loaded, cond, 2, generator_for(b"key"))
    assert a.shape == (2, ID_DIM) and a.dtype == np.float32
    assert np.array_equal(a, sample_codes(loaded, cond, 2, generator_for(b"key")))
    assert not np.allclose(a, sample_codes(loaded, cond, 2, generator_for(b"other")))
    with pytest.raises(ConfigError, match="at least 1"):
        sample_codes(loaded, cond, 0)
    with pytest.raises(ConfigError, match="kind"):
        CodeDiffusionConfig(kind="gan")
    # a model saved before the tone was a condition loads as conditioned on gender and age
    assert loaded.config.conditions == ["gender", "age"] and not loaded.config.on_tone
    with pytest.raises(ConfigError, match="conditioned on"):
        CodeDiffusionConfig(conditions=["gender", "tone"])
    with pytest.raises(ConfigError, match="tones for"):
        condition_of([Reading(True, THIRTY)], [100.0, 120.0])
    (tmp_path / "lcm" / "model.safetensors").write_bytes(b"corrupt")
    with pytest.raises(ModelLoadError, match="sha256"):
        CodeDiffusion.from_pretrained(tmp_path / "lcm")


def _planted_probes(renderer_sha: str) -> AttributeProbes:
    """The renderer 'draws' label 1 when a code's first value is positive, aged 30 when its
    second is near 0; photos read as label 1, aged 30."""
    gender, age = np.zeros(ID_DIM), np.zeros(ID_DIM)
    gender[0], age[1] = 4.0, 0.25
    return AttributeProbes((np.zeros(512), 1.0), (np.zeros(512), THIRTY), (gender, 0.0), (age, THIRTY), renderer_sha)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny codes model, renderer, student, sampler, probes and data; two train-code-lcm runs."""
    from idmrag_plugin.training.train_code_lcm import build_parser, train

    root = tmp_path_factory.mktemp("code_lcm")
    torch.manual_seed(0)
    DisentangledFaceVAE(CodesConfig(image_size=32, base_channels=8, id_dim=ID_DIM, attr_channels=2)).save_pretrained(
        root / "codes")
    FaceRenderer(RendererConfig(image_size=32, base_channels=8, max_channels=16, id_dim=ID_DIM, attr_channels=2,
                                style_dim=16)).save_pretrained(root / "renderer")
    save_file(IdentityStudent(width=8).state_dict(), str(root / "student.safetensors"))
    import json

    sha = json.loads((root / "renderer" / "config.json").read_text())["sha256"]
    _planted_probes(sha).save(root / "probes.safetensors")
    rng = np.random.default_rng(0)
    n = 256
    # faces from dark to light, so that the codes say something of the lightness the model is conditioned on
    brightness = rng.uniform(0.15, 1.0, (n, 1, 1, 1))
    crops = (rng.integers(0, 256, (n, 32, 32, 3)) * brightness).astype(np.uint8)
    np.savez(root / "data.npz", crops=crops,
             identity=np.repeat(np.arange(n // 2), 2).astype(np.int32),
             split=np.array(["train"] * (n - HELD_OUT) + ["val"] * HELD_OUT),
             emb_facenet=rng.standard_normal((n, 512)).astype(np.float32))
    from idmrag_plugin.training.train_code_lcm import training_codes

    codes = training_codes(root / "data.npz", root / "codes", torch.device("cpu")).numpy()
    sampler = IdentitySampler.fit(codes, np.repeat(np.arange(len(codes) // 2), 2), components=2)
    # A random codes model maps every image near one code (different people at cosine 0.99):
    # loosen the rules so that the model's samples can pass them, as real codes' samples do.
    sampler.distinct_cos, sampler.density_floor = 0.999, -1e9
    sampler.save(root / "sampler.safetensors")
    argv = ["--data", str(root / "data.npz"), "--output", str(root / "run"), "--codes", str(root / "codes"),
            "--probes", str(root / "probes.safetensors"), "--sampler", str(root / "sampler.safetensors"), "--hidden", "64", "--blocks", "2", "--batch", "64",
            "--lr", "2e-3", "--teacher-steps", "400", "--threads", "1", "--conditions", "gender,age,tone"]
    first = train(build_parser().parse_args(argv + ["--distill-steps", "2"]))
    second = train(build_parser().parse_args(argv + ["--distill-steps", "30"]))
    return root, argv, first, second


def test_training_loss_falls_and_resumes(tiny):
    root, argv, first, second = tiny
    assert first["teacher"] == 400 and first["distill"] == 2
    assert second["teacher"] == 400 and second["distill"] == 30  # resumed: the teacher was not retrained
    assert first["teacher_loss"] < 0.7 * first["teacher_start"]  # from about 1 (the output starts at zero)
    teacher = CodeDiffusion.from_pretrained(root / "run" / "teacher")
    lcm = CodeDiffusion.from_pretrained(root / "run" / "lcm")
    assert (teacher.config.kind, lcm.config.kind) == ("teacher", "lcm")
    assert lcm.config.codes_sha256
    assert lcm.config.code_probes_sha256 == AttributeProbes.load(root / "probes.safetensors").code_fingerprint()
    # calibrated on the held-out faces: their nearest training identity at the 99th percentile
    from idmrag_plugin.training.train_code_lcm import novelty_level, training_codes

    held_out = training_codes(root / "data.npz", root / "codes", torch.device("cpu"), split="val").numpy()
    assert len(held_out) == HELD_OUT
    sampler = IdentitySampler.load(root / "sampler.safetensors")
    assert lcm.config.novelty_cos == pytest.approx(novelty_level(held_out, sampler), abs=1e-6)
    units = held_out / np.linalg.norm(held_out, axis=1, keepdims=True)
    nearest = (units @ sampler.identity_means.T).max(axis=1)
    assert np.mean(nearest < lcm.config.novelty_cos) >= 0.95
    from idmrag_plugin.training.train_code_lcm import build_parser, train

    with pytest.raises(ConfigError, match="other settings"):
        train(build_parser().parse_args(argv + ["--distill-steps", "31", "--hidden", "32"]))


def test_samples_follow_the_condition(tiny):
    """The planted code probe reads gender from the sign of a code's first value: codes drawn
    for label 1 must lean positive there, codes for label 0 negative."""
    root, *_ = tiny
    probes = AttributeProbes.load(root / "probes.safetensors")
    for folder, steps in (("teacher", 20), ("lcm", 4)):
        model = CodeDiffusion.from_pretrained(root / "run" / folder)
        for gender in (True, False):
            codes = sample_codes(model, condition_of([Reading(gender, THIRTY)] * 200, [100.0] * 200), steps,
                                 generator_for(b"s"))
            agree = np.mean([r.gender == gender for r in probes.read_code(codes)])
            assert agree >= 0.75, (folder, gender, agree)


def test_samples_follow_the_face_s_lightness(tiny):
    """Codes drawn for a dark face lie among the codes of the training set's dark faces, codes
    drawn for a light one among its light faces': without the tone, dark-skinned people got
    pseudonyms of light-skinned faces."""
    from idmrag_plugin.training.train_code_lcm import training_codes, training_tones

    root, *_ = tiny
    codes = training_codes(root / "data.npz", root / "codes", torch.device("cpu")).numpy()
    tones = training_tones(root / "data.npz")
    assert tones.shape == (len(codes),)
    dark, light = np.percentile(tones, [10, 90])

    def nearest_tone(model: CodeDiffusion, steps: int, tone: float) -> float:
        """The median lightness of the training faces nearest to codes drawn for ``tone``."""
        drawn = sample_codes(model, condition_of([Reading(True, THIRTY)] * 200, [tone] * 200), steps,
                             generator_for(b"s"))
        distance = (((drawn[:, None] - codes[None]) / np.asarray(model.config.code_std)) ** 2).sum(-1)
        return float(np.median(tones[distance.argmin(1)]))

    for folder, steps in (("teacher", 20), ("lcm", 4)):
        model = CodeDiffusion.from_pretrained(root / "run" / folder)
        assert model.config.conditions == ["gender", "age", "tone"]
        assert nearest_tone(model, steps, dark) < nearest_tone(model, steps, light) - 0.3 * (light - dark), folder
    with pytest.raises(ConfigError, match="conditioned on"):
        model(torch.zeros(1, ID_DIM), torch.zeros(1), condition_of([Reading(True, THIRTY)]))


def test_the_perceived_group_conditions_as_centred_probabilities():
    readings = [Reading(True, THIRTY), Reading(False, 4.0)]
    groups = np.array([[0.0, 1.0, 0.0, 0.0, 0.0], [0.6, 0.1, 0.1, 0.1, 0.1]])
    cond = condition_of(readings, [100.0, 200.0], groups=groups)
    assert cond.shape == (2, 3 + len(GROUP_LABELS))
    assert np.allclose(cond[:, 3:].numpy(), (groups - 1 / len(GROUP_LABELS)) / GROUP_SCALE, atol=1e-6)
    assert np.array_equal(cond[:, :3].numpy(), condition_of(readings, [100.0, 200.0]).numpy())
    with pytest.raises(ConfigError, match="need tones"):
        condition_of(readings, groups=groups)
    with pytest.raises(ConfigError, match="one row per reading"):
        condition_of(readings, [100.0, 200.0], groups=groups[:1])
    with pytest.raises(ConfigError, match="sum to 1"):
        condition_of(readings, [100.0, 200.0], groups=groups * 2)
    config = CodeDiffusionConfig(conditions=["gender", "age", "tone", "group"])
    assert config.on_group and config.condition_width == 3 + len(GROUP_LABELS)
    with pytest.raises(ConfigError, match="conditioned on"):
        CodeDiffusionConfig(conditions=["gender", "age", "group"])


def _group_probes(renderer_sha: str) -> AttributeProbes:
    """The tiny fixture's code probes; photos read by dlib's descriptor (128 values): label 1 of
    ``GROUP_LABELS`` where the descriptor's first value is positive, label 0 otherwise."""
    planted = _planted_probes(renderer_sha)
    weight = np.zeros((len(GROUP_LABELS), 128))
    weight[1, 0], weight[0, 0] = 8.0, -8.0
    return replace(planted, image_gender=(np.zeros(128), 1.0), image_age=(np.zeros(128), THIRTY),
                   image_reader="dlib", image_group=(weight, np.zeros(len(GROUP_LABELS))))


@pytest.fixture(scope="module")
def grouped(tiny, tmp_path_factory):
    """A code model conditioned on the perceived group as well, trained
    on the tiny fixture's codes model and sampler: half the faces are tinted red and read as
    label 1 of GROUP_LABELS from their (planted) dlib descriptors, independently of their lightness."""
    from idmrag_plugin.training.train_code_lcm import build_parser, train

    root, *_ = tiny
    out = tmp_path_factory.mktemp("grouped")
    rng = np.random.default_rng(1)
    n = 256
    red = rng.random(n) < 0.5
    crops = (rng.integers(0, 256, (n, 32, 32, 3)) * rng.uniform(0.15, 1.0, (n, 1, 1, 1))).astype(np.float64)
    crops[red, ..., 0] = np.minimum(crops[red, ..., 0] * 1.6 + 60, 255)
    crops[red, ..., 2] *= 0.5
    descriptors = rng.standard_normal((n, 128))
    descriptors[:, 0] = np.where(red, 1.0, -1.0) * np.abs(descriptors[:, 0]) + np.where(red, 0.5, -0.5)
    np.savez(out / "data.npz", crops=crops.astype(np.uint8), identity=np.arange(n).astype(np.int32),
             split=np.array(["train"] * (n - HELD_OUT) + ["val"] * HELD_OUT),
             emb_dlib=descriptors.astype(np.float32))
    import json

    sha = json.loads((root / "renderer" / "config.json").read_text())["sha256"]
    _group_probes(sha).save(out / "probes.safetensors")
    argv = ["--data", str(out / "data.npz"), "--output", str(out / "run"), "--codes", str(root / "codes"),
            "--probes", str(out / "probes.safetensors"), "--sampler", str(root / "sampler.safetensors"),
            "--hidden", "64", "--blocks", "2", "--batch", "64", "--lr", "2e-3", "--teacher-steps", "600",
            "--distill-steps", "30", "--threads", "1", "--conditions", "gender,age,tone,group"]
    train(build_parser().parse_args(argv))
    return root, out, red


def test_samples_follow_the_perceived_group(grouped):
    """Codes drawn for a person read as label 1 lie among the codes of the training faces read so,
    codes drawn for label 0 among the others', at the same gender, age and lightness: with the
    lightness alone, Black people got white-featured pseudonyms."""
    from idmrag_plugin.training.train_code_lcm import training_codes, training_groups

    root, out, red = grouped
    probes = AttributeProbes.load(out / "probes.safetensors")
    codes = training_codes(out / "data.npz", root / "codes", torch.device("cpu")).numpy()
    read = training_groups(out / "data.npz", probes)
    assert read.shape == (len(codes), len(GROUP_LABELS)) and np.allclose(read.sum(axis=1), 1.0)
    assert np.array_equal(read.argmax(axis=1) == 1, red[: len(codes)])

    def share_of_label_1(model: CodeDiffusion, steps: int, label: int) -> float:
        group = np.eye(len(GROUP_LABELS))[[label] * 200]
        drawn = sample_codes(model, condition_of([Reading(True, THIRTY)] * 200, [120.0] * 200, groups=group),
                             steps, generator_for(b"s"))
        distance = (((drawn[:, None] - codes[None]) / np.asarray(model.config.code_std)) ** 2).sum(-1)
        return float(np.mean(red[distance.argmin(1)]))

    for folder, steps in (("teacher", 20), ("lcm", 4)):
        model = CodeDiffusion.from_pretrained(out / "run" / folder)
        assert model.config.conditions == ["gender", "age", "tone", "group"]
        assert model.config.group_probe_sha256 == probes.group_fingerprint() != ""
        assert share_of_label_1(model, steps, 1) > share_of_label_1(model, steps, 0) + 0.2, folder


def test_the_group_condition_needs_dlib_descriptors_and_a_group_probe(tiny, grouped):
    from idmrag_plugin.training.train_code_lcm import training_groups

    root, out = tiny[0], grouped[1]
    with pytest.raises(ConfigError, match="emb_dlib"):
        training_groups(root / "data.npz", AttributeProbes.load(out / "probes.safetensors"))
    with pytest.raises(ConfigError, match="group probe"):
        training_groups(out / "data.npz", AttributeProbes.load(root / "probes.safetensors"))


def test_generator_writes_pseudonyms_for_the_person_s_perceived_group(grouped, tmp_path):
    root, out, _ = grouped
    generator = RendererLCMGenerator(out / "run" / "lcm", root / "renderer", root / "codes", root / "sampler.safetensors",
                                     out / "probes.safetensors", root / "student.safetensors", steps=2, secret=b"s")
    probes = AttributeProbes.load(out / "probes.safetensors")
    descriptor = np.zeros(128)
    descriptor[0] = 1.0
    wanted = replace(probes.read_image(descriptor[None])[0], tone=120.0)
    assert wanted.group is not None and int(np.argmax(wanted.group)) == 1
    cond = generator.condition(wanted, np.zeros(ID_DIM, np.float32), 3)
    assert cond.shape == (3, 3 + len(GROUP_LABELS))
    assert np.allclose(cond[:, 3:].numpy(), (np.asarray(wanted.group) - 1 / len(GROUP_LABELS)) / GROUP_SCALE, atol=1e-6)
    with pytest.raises(ModelLoadError, match="perceived group"):
        generator.condition(replace(wanted, group=None), np.zeros(ID_DIM, np.float32), 1)
    # probes without the group probe, or with another one, are refused when the model loads
    for probes_file, other in (("none.safetensors", replace(probes, image_group=None)),
                               ("other.safetensors", replace(probes, image_group=(-probes.image_group[0],
                                                                                  probes.image_group[1])))):
        other.save(tmp_path / probes_file)
        refusing = RendererLCMGenerator(out / "run" / "lcm", root / "renderer", root / "codes",
                                        root / "sampler.safetensors", tmp_path / probes_file,
                                        root / "student.safetensors", steps=2, secret=b"s")
        with pytest.raises(ModelLoadError, match="perceived group"):
            refusing._load_code_model()


def _generator(root, **kwargs) -> RendererLCMGenerator:
    return RendererLCMGenerator(root / "run" / "lcm", root / "renderer", root / "codes", root / "sampler.safetensors",
                                root / "probes.safetensors", root / "student.safetensors", **kwargs)


def test_generator_draws_acceptable_suited_pseudonyms(tiny):
    from idmrag_plugin.generation.vae_generator import SUITED_ATTEMPTS

    root, *_ = tiny
    generator = _generator(root, steps=2, secret=b"s")
    # The tiny random codes model puts everyone at cosine 0.99: loosen the novelty level as the
    # sampler's rules were, so that the model's own candidates can pass (the fallback is not tested here).
    generator._load_code_model().config.novelty_cos = 0.9999
    assert generator.name == "renderer-lcm@2" and _generator(root).steps == 1
    face = np.random.default_rng(2).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    out = generator.generate(GenerationRequest(face, attempt=0, seed=7))
    assert out.shape == face.shape and out.dtype == np.uint8
    inside = generator.mask(128) > 0.5
    assert np.array_equal(out[~inside], face[~inside])
    assert np.array_equal(out, generator.generate(GenerationRequest(face, attempt=0, seed=7)))  # one pseudonym
    code = generator.encode(face[None])[0][0]
    assert not np.allclose(generator.replacement_code(code, 0), generator.replacement_code(code, 1))  # a retry
    probes = AttributeProbes.load(root / "probes.safetensors")

    def cos(a: np.ndarray) -> np.ndarray:
        return (a / np.linalg.norm(a, axis=-1, keepdims=True)) @ (code / np.linalg.norm(code))

    (wanted,) = generator._readings.values()  # label 1, 30 years (rounded as photo readings are)
    assert wanted.gender and wanted.log_age == round(THIRTY, READING_DECIMALS)
    assert wanted.tone == round(face_lightness(face[None])[0])  # the photo's face lightness, in whole steps
    assert generator.condition(wanted, code, 3).shape == (3, 3)

    def candidates_of(attempt: int) -> np.ndarray:
        return sample_codes(generator._load_code_model(), generator.condition(wanted, generator._seed_code(code),
                                                                              CANDIDATES), 2,
                            generator_for(pseudonym_key(b"s", generator._seed_code(code), attempt)))

    for attempt in range(SUITED_ATTEMPTS):
        z = generator.replacement_code(code, attempt)
        distinct, acceptable = generator._sampler.judge(code, z[None])
        assert distinct[0] and acceptable[0]
        assert any(np.allclose(z, c, atol=1e-6) for c in candidates_of(attempt))  # the LCM's, not the fallback's
        assert probes.read_code(z[None])[0].gender  # the photo reads label 1: so must the drawing
        # of the attempt's candidates that pass and suit best, the one least like the original won
        candidates = candidates_of(attempt)
        mismatch = np.array([probes.mismatch(wanted, r) for r in probes.read_code(candidates)])
        mismatch[~generator._sampler.judge(code, candidates)[1]] = np.inf
        best = mismatch == mismatch.min()
        assert best.sum() > 1 and cos(z) == pytest.approx(cos(candidates[best]).min(), abs=1e-6)
    # another secret, other pseudonyms
    other = _generator(root, steps=2, secret=b"t")
    other.generate(GenerationRequest(face, attempt=0, seed=7))
    assert not np.array_equal(other.replacement_code(code, 0), generator.replacement_code(code, 0))


def test_a_ranking_is_computed_once_per_code_attempt_and_secret(tiny, monkeypatch):
    """A face asks for its codes up to three times; the batch is sampled and ranked once, the
    same codes come back (copies: a caller's change does not reach the next), and another
    attempt, another photo's code or a new secret ranks afresh."""
    root, *_ = tiny
    generator = _generator(root, steps=2, secret=b"s")
    generator._load_code_model().config.novelty_cos = 0.9999
    face = np.random.default_rng(3).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    generator.generate(GenerationRequest(face, attempt=0, seed=7))  # the person met, their reading kept
    code = generator.encode(face[None])[0][0]
    ranked_before = generator._rank_candidates(code, generator._seed_code(code),
                                               generator._readings[generator._seed_code(code).tobytes()],
                                               generator._attribute_keeping()[0], 0, 0)
    calls: list[tuple[int, int]] = []
    rank = generator._rank_candidates

    def counted(*args):
        calls.append(args[-2:])
        return rank(*args)

    monkeypatch.setattr(generator, "_rank_candidates", counted)
    generator._rankings.clear()
    first = generator.pseudonym_codes(code, 0, 1)
    first[:] = 0.0
    again = generator.pseudonym_codes(code, 0, 4)
    assert calls == [(0, 0)]
    np.testing.assert_array_equal(again, ranked_before[:4])
    generator.pseudonym_codes(code, 1, 4)
    other = code + np.float32(1e-3)
    generator.pseudonym_codes(other, 0, 4)
    assert calls == [(0, 0), (1, 0), (0, 0)]
    generator.secret = b"t"
    assert not generator._rankings
    generator.generate(GenerationRequest(face, attempt=0, seed=7))
    assert calls[-1] == (0, 0) and len(calls) > 3


def test_every_photo_of_a_person_gets_the_same_pseudonym(tiny):
    """A second photo of a registered person has its own identity code; the pseudonym must not
    depend on it (chosen by this photo's code, two photos of one person got two pseudonyms)."""
    root, *_ = tiny
    generator = _generator(root, steps=2, secret=b"s")
    generator._load_code_model().config.novelty_cos = 0.9999
    face = (np.random.default_rng(3).integers(0, 256, (128, 128, 3)) * 0.7).astype(np.uint8)  # mid-tone, as most training faces
    generator.generate(GenerationRequest(face, attempt=0, seed=7))  # the person's first photo
    # one person's photos lie within the sampler's same-person level: loosened as for the tiny
    # codes model, whose candidates are all within 0.82-0.93 of this face's code
    generator._sampler.distinct_cos = 0.95
    first = generator.encode(face[None])[0][0].astype(np.float64)
    chosen = generator.replacement_code(first, 0)
    (wanted,) = generator._readings.values()
    candidates = sample_codes(generator._load_code_model(), generator.condition(wanted, generator._seed_code(first),
                                                                                CANDIDATES), 2,
                              generator_for(pseudonym_key(b"s", generator._seed_code(first), 0)))
    probes = AttributeProbes.load(root / "probes.safetensors")
    mismatch = np.array([probes.mismatch(wanted, r) for r in probes.read_code(candidates)])
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)

    def least_like(code: np.ndarray) -> np.ndarray:
        """The best-suited passing candidates ordered from least to most like ``code``."""
        passing = generator._sampler.judge(code, candidates)[1]
        best = np.flatnonzero(passing & (mismatch == mismatch[passing].min()))
        return candidates[best[np.argsort(unit(candidates[best]) @ unit(code))]]

    ordered = least_like(first)
    assert np.allclose(ordered[0], chosen) and len(ordered) > 1
    # other photos of the person: codes leaning towards the pseudonym and away from the runner-up,
    # so that "the candidate least like this photo" becomes another one
    lean = unit(chosen) - unit(ordered[1])
    flipped = 0
    for step in (0.05, 0.1, 0.2):
        other = first + step * np.linalg.norm(first) * lean
        assert unit(other) @ unit(first) > generator._sampler.distinct_cos  # the same person
        assert np.array_equal(generator._seed_code(other), generator._seed_code(first))
        flipped += not np.allclose(least_like(other)[0], chosen)
        assert np.allclose(generator.replacement_code(other, 0), chosen)
    assert flipped  # the rule by this photo's code would have given another pseudonym


def test_a_person_next_photo_starts_with_their_verified_pseudonym(tiny):
    """When a person's first photo was verified only at a later attempt, their next photo tries
    that pseudonym first; the other attempts keep their order and stay distinct."""
    root, *_ = tiny
    generator = _generator(root, steps=2, secret=b"s")
    generator._load_code_model().config.novelty_cos = 0.9999
    face = np.random.default_rng(4).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    code = generator.encode(face[None])[0][0]
    assert [generator.pseudonym_attempt(code, a) for a in range(4)] == [0, 1, 2, 3]
    asked: list[int] = []
    pseudonym_codes = generator.pseudonym_codes

    def recording(code: np.ndarray, attempt: int, count: int) -> np.ndarray:
        asked.append(attempt)
        return pseudonym_codes(code, attempt, count)

    generator.pseudonym_codes = recording  # type: ignore[method-assign]
    generator.speckle = lambda drawn, grow=None: np.zeros(len(drawn))  # type: ignore[method-assign]  # all clean
    third = GenerationRequest(face, attempt=2, seed=11)
    generator.generate(third)
    generator.accepted(GenerationRequest(face, attempt=0, seed=12))  # never drawn: ignored
    assert [generator.pseudonym_attempt(code, a) for a in range(4)] == [0, 1, 2, 3]
    generator.accepted(third)
    assert [generator.pseudonym_attempt(code, a) for a in range(6)] == [2, 2, 0, 1, 3, 4]
    # the person's next photo (here the same crop again) is drawn with that pseudonym first, and
    # if refused there drawn again at once over the wider mask, before another; a new person's
    # second attempt keeps the first's mask
    normal, wide = generator.mask_grow_for(0), generator.mask_grow_for(WIDER_MASK_FROM_ATTEMPT)
    assert WIDER_MASK_FROM_ATTEMPT > 1 and wide > normal == generator.mask_grow_for(1)
    requests = [GenerationRequest(face, attempt=attempt, seed=13 + attempt) for attempt in range(3)]
    for request in requests:
        generator.generate(request)
    assert asked == [2, 2, 2, 0]
    assert [generator.paste_grow_of(r) for r in requests] == [normal, wide, wide]
    assert generator.redraws_kept_pseudonym(code, 1) and not generator.redraws_kept_pseudonym(code, 2)
    other = _generator(root, steps=2, secret=b"s")  # a new generator knows nothing of it
    other._load_code_model().config.novelty_cos = 0.9999
    assert [other.pseudonym_attempt(code, a) for a in range(3)] == [0, 1, 2]
    assert not other.redraws_kept_pseudonym(code, 1)
    fresh = GenerationRequest(face, attempt=1, seed=21)
    other.generate(fresh)
    assert other.paste_grow_of(fresh) == normal


def test_what_is_kept_about_a_person_goes_when_the_registry_forgets_them(tiny):
    """A long job's memory stays bounded by the registry's: the gender and age read for a
    person and their verified pseudonym attempt go when the registry makes room."""
    from idmrag_plugin.generation.vae_generator import PersonRegistry

    root, *_ = tiny
    generator = _generator(root, steps=2, secret=b"s")
    generator._load()
    generator._registry = PersonRegistry(capacity=2)
    rng = np.random.default_rng(6)
    people = []
    for i in range(3):
        face = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
        descriptor = np.zeros(128, np.float32)
        descriptor[i] = 1.0  # three different people in dlib's eyes
        request = GenerationRequest(face, attempt=1, seed=100 + i, original_embeddings={"dlib": descriptor})
        generator.generate(request)
        generator.accepted(request)
        people.append(generator._seed_code(generator.encode(face[None])[0][0]).tobytes())
        assert len(generator._readings) == len(generator._verified_attempt) == len(generator._unspeckled) == min(i + 1, 2)
    assert set(generator._readings) == set(generator._verified_attempt) == set(generator._unspeckled) == set(people[1:])


def test_generator_refuses_a_model_for_other_code_probes(tiny, tmp_path):
    root, *_ = tiny
    trained_on = AttributeProbes.load(root / "probes.safetensors")
    weight, bias = trained_on.code_age
    replace(trained_on, code_age=(weight * 2.0, bias)).save(tmp_path / "probes.safetensors")
    generator = RendererLCMGenerator(root / "run" / "lcm", root / "renderer", root / "codes",
                                     root / "sampler.safetensors", root / "probes.safetensors",
                                     root / "student.safetensors")
    generator.attribute_probes_path = tmp_path / "probes.safetensors"
    with pytest.raises(ModelLoadError, match="train-code-lcm"):
        generator._load_code_model()
    # Image probes refitted, code probes kept (`fit-attribute-probes --code-probes`): the model,
    # trained on the code probes' read-outs alone, stays valid.
    refitted = replace(trained_on, image_age=(trained_on.image_age[0] + 0.5, 1.0), age_range=(1.0, 4.0))
    refitted.save(tmp_path / "refitted.safetensors")
    assert refitted.code_fingerprint() == trained_on.code_fingerprint()
    generator.attribute_probes_path = tmp_path / "refitted.safetensors"
    assert generator._load_code_model().config.code_probes_sha256 == trained_on.code_fingerprint()
    with pytest.raises(ModelLoadError, match="train-code-lcm"):
        RendererLCMGenerator(tmp_path, root / "renderer", root / "codes", root / "sampler.safetensors",
                             root / "probes.safetensors", root / "student.safetensors")


def test_config_takes_steps_for_renderer_lcm_only():
    assert AnonymizerConfig(generator="renderer-lcm", generator_steps=2).generator_steps == 2
    with pytest.raises(ConfigError, match="generator_steps"):
        AnonymizerConfig(generator="renderer", generator_steps=2)


def test_packaged_code_lcm_fits_the_packaged_parts_and_replaces_a_face(make_engine, astronaut, oracles):
    """The shipped code LCM (sha256 checked on load) was trained for the packaged codes model and
    attribute probes; through the whole engine a generated face passes every oracle or fails closed."""
    from conftest import anonymize_with_packaged_generator

    from idmrag_plugin.generation.latent_diffusion import codes_fingerprint
    from idmrag_plugin.weights import (
        ATTRIBUTE_PROBES_FILE,
        CODE_LCM_DIR,
        CODES_VAE_DIR,
        packaged,
    )

    model = CodeDiffusion.from_pretrained(packaged(CODE_LCM_DIR))
    assert model.config.kind == "lcm"
    assert model.config.codes_sha256 == codes_fingerprint(packaged(CODES_VAE_DIR))
    probes = AttributeProbes.load(packaged(ATTRIBUTE_PROBES_FILE))
    assert model.config.code_probes_sha256 == probes.code_fingerprint()
    result = anonymize_with_packaged_generator(make_engine, astronaut, oracles, generator="renderer-lcm",
                                               generator_steps=1, cache_size=0)
    assert result.faces[0].attempts >= 1
    # the packaged tone probe reads the astronaut's code darker as her face is darkened
    from idmrag_plugin.engine.align import align_face
    from idmrag_plugin.generation.attributes import face_lightness
    from idmrag_plugin.generation.vae_generator import VAEDecodeGenerator
    from idmrag_plugin.weights import SAMPLER_FILE

    crop = align_face(astronaut, result.faces[0].detection.landmarks, 128).crop
    darkened = np.stack([np.clip(255 * (crop / 255.0) ** gamma, 0, 255).astype(np.uint8) for gamma in (0.6, 1.0, 1.6, 2.2)])
    codec = VAEDecodeGenerator(packaged(CODES_VAE_DIR), packaged(SAMPLER_FILE))
    read = probes.read_tone(codec.encode(darkened)[0])
    assert np.all(np.diff(read) < 0)
    assert np.abs(read - face_lightness(darkened)).max() < 30  # L* 0-255; faces spread by about 25


def test_learned_proposals_are_held_to_the_novelty_level():
    """A code that resembles a training identity more than unseen people do (the novelty
    level) is refused; one within it passes, though every real face fails the sampler's own,
    pairwise level."""
    rng = np.random.default_rng(0)
    sampler = IdentitySampler.fit(rng.standard_normal((400, 64)), np.repeat(np.arange(200), 2), components=2)
    sampler.density_floor = -1e9  # this test is about the nobody-real rule only
    target = sampler.identity_means[0]
    orth = rng.standard_normal(64)
    orth -= (orth @ target) * target
    orth /= np.linalg.norm(orth)
    close, copy = 8 * (0.8 * target + 0.6 * orth), 8 * target
    original = -target * 8
    _, default = sampler.judge(original, np.stack([close, copy]))
    _, loose = sampler.judge(original, np.stack([close, copy]), nobody_real_cos=0.9)
    _, strict = sampler.judge(original, np.stack([close, copy]), nobody_real_cos=0.7)
    assert sampler.distinct_cos < 0.8
    assert list(default) == [False, False] and list(loose) == [True, False] and list(strict) == [False, False]


def test_the_default_engine_draws_one_pseudonym_for_two_photos_of_one_person(make_engine, astronaut):
    """Through the default engine, a second photo of a person (the astronaut mirrored: her
    identity code differs, dlib finds her) is drawn from the pseudonym code of the first, and
    both faces are verified."""
    base = make_engine()
    engine = FaceAnonymizer(AnonymizerConfig(cache_size=0), detector=base.detector, oracles=base.oracles)
    generator = engine.generator
    generator.secret = b"one-person".ljust(32, b"\0")  # with it, a pick by each photo's code gave two
    drawn: list[np.ndarray] = []  # the codes whose drawings are finished (refined) for the photo
    finish = generator._finish

    def recording(drawings, face: np.ndarray, codes: np.ndarray, grow: float | None = None) -> np.ndarray:
        drawn.extend(codes)
        return finish(drawings, face, codes, grow)

    generator._finish = recording  # type: ignore[method-assign]
    first = engine.anonymize(astronaut)
    codes_first = list(drawn)
    second_photo = np.ascontiguousarray(astronaut[:, ::-1])
    drawn.clear()
    second = engine.anonymize(second_photo)
    assert first.counts() == second.counts() == {"generated": 1}
    assert len(generator._registry) == 1  # one person
    assert np.array_equal(codes_first[-1], drawn[-1])  # one pseudonym


def test_a_new_secret_on_the_default_generator_starts_a_new_scope(make_engine, astronaut):
    """Setting the default generator's secret forgets every person met and every pseudonym
    kept under the old one (and the engine's cache follows): the next photo is drawn exactly
    as a new engine with that secret draws it, and not as under the old secret."""
    base = make_engine()
    engine = FaceAnonymizer(AnonymizerConfig(), detector=base.detector, oracles=base.oracles)
    generator = engine.generator
    generator.secret = b"old scope".ljust(32, b"\0")
    before = engine.anonymize(astronaut)
    engine.anonymize(np.ascontiguousarray(astronaut[:, ::-1]))  # the person met again, her pseudonym kept
    assert len(generator._registry) == 1
    generator.secret = b"new scope".ljust(32, b"\0")
    assert len(generator._registry) == 0
    after = engine.anonymize(astronaut)
    fresh = FaceAnonymizer(AnonymizerConfig(), detector=base.detector, oracles=base.oracles)
    fresh.generator.secret = b"new scope".ljust(32, b"\0")
    expected = fresh.anonymize(astronaut)
    assert not after.cached and after.counts() == expected.counts() == {"generated": 1}
    np.testing.assert_array_equal(after.pixels, expected.pixels)
    assert not np.array_equal(after.pixels, before.pixels)
    with pytest.raises(ConfigError, match="non-empty bytes"):
        generator.secret = "a text secret"  # type: ignore[assignment]


def test_a_person_pseudonym_is_one_drawn_clean_in_the_speckle_reference(tiny):
    """Among equally suited candidates, the first the renderer draws clean in the reference
    context leads (codes drawn clean there are drawn clean in most other photos); a less suited
    one never jumps ahead, and with none clean the order stays."""
    from idmrag_plugin.generation.renderer_generator import REFERENCE_LOOKAHEAD
    from idmrag_plugin.generation.speckle_reference import CROP_SIZE, reference_crop

    root, *_ = tiny
    generator = _generator(root, steps=2, secret=b"s")
    generator._load_code_model().config.novelty_cos = 0.9999
    face = np.random.default_rng(5).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    code = generator.encode(face[None])[0][0]
    generator._note_person(code, face)
    verdicts: dict[bytes, bool] = {}
    generator.speckled_in_reference = lambda c: verdicts.get(np.asarray(c).tobytes(), False)  # type: ignore[method-assign]
    order = generator._ranked_candidates(code, 0, 0)
    assert len(order) > 3
    verdicts.update({order[0].tobytes(): True, order[1].tobytes(): True})
    generator._rankings.clear()  # the planted verdicts changed (the real ones are fixed per code)
    promoted = generator._ranked_candidates(code, 0, 0)
    assert np.array_equal(promoted, np.concatenate([order[2:3], order[:2], order[3:]]))
    assert np.array_equal(generator.replacement_code(code, 0), order[2])
    assert np.array_equal(generator.pseudonym_codes(code, 0, 3), promoted[:3])

    codes = np.arange(12, dtype=np.float32).reshape(6, 2)
    verdicts.clear()
    verdicts.update({codes[0].tobytes(): True, codes[1].tobytes(): True})
    suitability = np.array([0.0, 0.0, 0.5, 0.0, 0.0, 0.0])  # codes[2] suits worse: never ahead
    assert np.array_equal(generator._clean_in_reference_first(codes, suitability), codes[[3, 0, 1, 2, 4, 5]])
    verdicts.update({c.tobytes(): True for c in codes})
    assert np.array_equal(generator._clean_in_reference_first(codes, np.zeros(6)), codes)
    many = np.arange(2 * (REFERENCE_LOOKAHEAD + 2), dtype=np.float32).reshape(-1, 2)
    verdicts.update({c.tobytes(): True for c in many[:REFERENCE_LOOKAHEAD]})
    assert np.array_equal(generator._clean_in_reference_first(many, np.zeros(len(many))), many)  # beyond the lookahead

    # the real verdict: one drawing in the reference context, remembered per code
    del generator.speckled_in_reference
    drawn_into: list[np.ndarray] = []
    draw = generator._draw

    def recording(some_codes, context, *args, **kwargs):
        drawn_into.append(context)
        return draw(some_codes, context, *args, **kwargs)

    generator._draw = recording  # type: ignore[method-assign]
    first = generator.speckled_in_reference(order[0])
    assert len(drawn_into) == 1 and np.array_equal(drawn_into[0], reference_crop(CROP_SIZE))
    assert generator.speckled_in_reference(order[0]) == first and len(drawn_into) == 1


def test_pseudonyms_of_the_person_s_complexion_come_first(tiny):
    """With a code tone probe, the suited candidates whose faces are within TONE_TOLERANCE of the
    lightness they were written for (the person's face's in their photo) come first (the
    furthest from the person among them leads); a less suited candidate never jumps ahead for its
    tone; without the probe the order is the attributes' and closeness's alone. Above the
    condition's ceiling any candidate light enough suits."""
    from idmrag_plugin.generation.attributes import TONE_TOLERANCE
    from idmrag_plugin.generation.sampler import _normalise

    root, *_ = tiny
    generator = _generator(root, steps=2, secret=b"s")
    generator._load_code_model().config.novelty_cos = 0.9999
    generator.speckled_in_reference = lambda c: False  # type: ignore[method-assign]
    face = (np.random.default_rng(6).integers(0, 256, (128, 128, 3)) * 0.7).astype(np.uint8)  # below the ceiling
    code = generator.encode(face[None])[0][0]
    generator._note_person(code, face)
    probes, student = generator._attribute_keeping()
    untoned = generator._ranked_candidates(code, 0, 0)
    assert untoned is not None and len(untoned) > 4
    seed = generator._seed_code(code)
    wanted = generator._readings[seed.tobytes()]
    ceiling = generator._load_code_model().config.tone_ceiling
    assert wanted.tone is not None and wanted.tone < ceiling - TONE_TOLERANCE
    # lightness read along the third code value; the person's own code reads lighter than their
    # photo (as the probe reads many dark-skinned people's): the photo's lightness is the target
    weight = np.zeros(ID_DIM)
    weight[2] = 1.0
    spread = np.abs((untoned - seed) @ weight).max()
    slope = 4 * TONE_TOLERANCE / spread
    own_read = wanted.tone + 1.5 * TONE_TOLERANCE
    generator._probes = (replace(probes, code_tone=(weight * slope, own_read - slope * seed @ weight)), student)

    def ranked_within(target: float, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ranked candidates, their attribute mismatch and whether each suits ``target``."""
        generator._rankings.clear()  # the planted probes changed (the engine's are loaded once)
        toned = generator._ranked_candidates(code, 0, 0)
        assert sorted(map(bytes, toned)) == sorted(map(bytes, pool))  # the same acceptable pool, reordered
        read = generator._probes[0].read_tone(toned)
        within = read >= ceiling - TONE_TOLERANCE if target >= ceiling else np.abs(read - target) <= TONE_TOLERANCE
        mismatch = np.array([probes.mismatch(wanted, r) for r in probes.read_code(toned)])
        assert within.any() and not within.all()
        for level in np.unique(mismatch):  # within each level of suitability, the complexion's first
            tier = within[mismatch == level]
            assert not np.any(tier[1:] & ~tier[:-1]), "an off-tone candidate ahead of one of the person's tone"
        assert np.all(np.diff(mismatch) >= 0)  # the attributes still come first
        return toned, mismatch, within

    toned, mismatch, within = ranked_within(wanted.tone, untoned)
    first = toned[(mismatch == mismatch[0]) & within]
    closeness = _normalise(first) @ _normalise(seed)
    assert np.all(np.diff(closeness) >= 0)  # least like the person first among them
    # a light photo: the candidates (written for the ceiling) that read light enough come first
    generator._readings[seed.tobytes()] = replace(wanted, tone=ceiling + 40.0)
    generator._probes = (probes, student)
    generator._rankings.clear()
    light_pool = generator._ranked_candidates(code, 0, 0)
    generator._probes = (replace(probes, code_tone=(weight * slope, ceiling - slope * seed @ weight)), student)
    ranked_within(ceiling + 40.0, light_pool)


def test_group_balance_weighs_each_perceived_group_alike():
    """``--balance-groups 1``: every perceived group is drawn equally often however few faces it
    has; 0 leaves the data's own shares; the weights are a distribution."""
    from idmrag_plugin.training.train_code_lcm import group_balance

    most = np.array([0] * 90 + [1] * 8 + [2] * 2)
    groups = np.eye(len(GROUP_LABELS))[most] * 0.8 + 0.2 / len(GROUP_LABELS)
    even = group_balance(groups, 1.0).numpy()
    assert even.shape == (100,) and np.isclose(even.sum(), 1.0)
    shares = np.bincount(most, weights=even, minlength=len(GROUP_LABELS))[:3]
    assert np.allclose(shares, 1 / 3)
    assert np.allclose(group_balance(groups, 0.0).numpy(), 0.01)
    half = np.bincount(most, weights=group_balance(groups, 0.5).numpy())
    assert half[0] > half[1] > half[2] and half[2] > 0.02  # between the data's shares and even ones


def test_a_drawing_read_as_another_gender_or_age_is_unfit(tiny):
    """The drawing itself, as the engine shows it, is read by the image probes: the age
    difference in units of DRAWN_AGE_TOLERANCE (fit, at most 1, within it), and for the other
    gender 1 plus how sure the reading is."""
    from idmrag_plugin.generation.renderer_generator import DRAWN_AGE_TOLERANCE

    root, *_ = tiny
    generator = _generator(root, steps=2, secret=b"s")
    probes, student = generator._attribute_keeping()
    shown = np.random.default_rng(9).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    assert generator.misdrawn(shown, Reading(True, THIRTY)) < 0.05  # planted: every face reads label 1, aged 30
    sure = 1.0 / (1.0 + np.exp(-1.0))
    assert np.isclose(generator.misdrawn(shown, Reading(False, THIRTY)), 1.0 + 2.0 * (sure - 0.5))
    older = THIRTY + 2 * DRAWN_AGE_TOLERANCE
    assert np.isclose(generator.misdrawn(shown, Reading(True, older)), 2.0, atol=0.05)
    assert generator.misdrawn(shown, Reading(True, older), age=False) == 0.0  # the person's own pseudonym: gender only
    assert np.isclose(generator.misdrawn(shown, Reading(True, THIRTY + 0.5 * DRAWN_AGE_TOLERANCE)), 0.5, atol=0.05)
    generator._probes = (replace(probes, image_gender=(np.zeros(512), -3.0)), student)
    assert generator.misdrawn(shown, Reading(True, THIRTY)) > 1.9 and generator.misdrawn(shown, Reading(False, THIRTY)) < 0.05


def test_a_drawing_read_as_another_group_than_a_surely_read_person_s_is_unfit(tiny):
    """With a group probe on dlib's descriptor: a drawing that reads the group the person's
    photo surely reads as with under DRAWN_GROUP_FLOOR is unfit by 1 plus the shortfall; a
    person read unsurely, a reading without a group, or another reader judge no group."""
    from idmrag_plugin.generation.renderer_generator import (
        DRAWN_GROUP_FLOOR,
        GROUP_SURE,
        RendererGenerator,
    )

    root, *_ = tiny
    probes, _ = _generator(root, steps=2, secret=b"s")._attribute_keeping()
    embedding = np.ones((1, 128))
    bias = np.zeros(len(GROUP_LABELS))
    bias[0] = 4.0  # every drawing reads the first group, e^4 / (e^4 + 4) = 0.93
    dlib_probes = replace(probes, image_reader="dlib", image_group=(np.zeros((len(GROUP_LABELS), 128)), bias))
    first = float(np.exp(4.0) / (np.exp(4.0) + len(GROUP_LABELS) - 1))
    other = (1.0 - first) / (len(GROUP_LABELS) - 1)
    sure = (0.05, 0.8, 0.05, 0.05, 0.05)
    assert max(sure) >= GROUP_SURE and other < DRAWN_GROUP_FLOOR
    off = RendererGenerator._group_off
    assert np.isclose(off(dlib_probes, embedding, Reading(True, THIRTY, group=sure)), 1.0 + DRAWN_GROUP_FLOOR - other)
    assert off(dlib_probes, embedding, Reading(True, THIRTY, group=(0.8, 0.05, 0.05, 0.05, 0.05))) == 0.0
    assert off(dlib_probes, embedding, Reading(True, THIRTY, group=(0.3, 0.4, 0.1, 0.1, 0.1))) == 0.0  # unsure
    assert off(dlib_probes, embedding, Reading(True, THIRTY)) == 0.0
    assert off(replace(dlib_probes, image_group=None), embedding, Reading(True, THIRTY, group=sure)) == 0.0
    assert off(replace(dlib_probes, image_reader="student"), embedding, Reading(True, THIRTY, group=sure)) == 0.0


def test_a_pseudonym_drawn_as_another_gender_gives_way_to_an_alternate(tiny, monkeypatch):
    """A person's pseudonym whose drawing in this photo reads as another gender (or age) is
    unfit as a speckled one is: the next code in order that draws fit is used."""
    root, *_ = tiny
    generator = _generator(root, steps=2, secret=b"s")
    generator._load_code_model().config.novelty_cos = 0.9999
    face = np.random.default_rng(5).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    _, attr = (a[0] for a in generator.encode(face[None]))
    monkeypatch.setattr(generator, "speckle", lambda drawn, grow=None: np.zeros(len(drawn)))
    monkeypatch.setattr(generator, "speckled_in_reference", lambda c: False)  # drawings in this photo only
    drawn_codes: list[np.ndarray] = []
    draw = generator._draw

    def recording(some_codes, *args, **kwargs):
        drawn_codes.append(np.array(some_codes))
        return draw(some_codes, *args, **kwargs)

    monkeypatch.setattr(generator, "_draw", recording)
    misdrawn = generator.misdrawn
    first_code: list[bytes] = []

    def wrong_for_the_first(shown, wanted, age=True, descriptor=None):
        # the planted probes read every drawing as the person
        assert misdrawn(shown, wanted, age, descriptor=descriptor) < 0.05
        first_code.append(drawn_codes[-1][0].tobytes()) if not first_code else None
        return 2.0 if drawn_codes[-1][0].tobytes() == first_code[0] else 0.0

    monkeypatch.setattr(generator, "misdrawn", wrong_for_the_first)
    out = generator.generate(GenerationRequest(face, attempt=0, seed=7))
    assert len(drawn_codes) >= 2 and drawn_codes[0][0].tobytes() != drawn_codes[1][0].tobytes()
    assert np.array_equal(out, generator._composite(generator._render(drawn_codes[1], face, attr[None])[0], face))
