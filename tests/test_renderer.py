"""The context-aware face renderer on tiny randomly initialised configs: it never sees the
masked original, keeps the context exactly, trains and resumes, persists with a sha256, and
serves the engine as a generator."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from conftest import anonymize_with_packaged_generator
from safetensors.torch import save_file

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer, GenerationRequest, ModelLoadError
from idmrag_plugin.errors import ConfigError
from idmrag_plugin.generation.encoder import CodesConfig, DisentangledFaceVAE
from idmrag_plugin.generation.identity_student import IdentityStudent
from idmrag_plugin.generation.renderer import FaceRenderer, RendererConfig, inpaint_mask
from idmrag_plugin.generation.renderer_generator import RendererGenerator
from idmrag_plugin.generation.sampler import IdentitySampler


@pytest.fixture(autouse=True)
def _unfit_attempts_kept(unfit_attempts_kept):
    """Every least unfit drawing kept here (see conftest.unfit_attempts_kept)."""


def _tiny(size: int) -> FaceRenderer:
    torch.manual_seed(0)
    return FaceRenderer(RendererConfig(image_size=size, base_channels=8, max_channels=16, id_dim=16,
                                       attr_channels=2, style_dim=16)).eval()


def _inputs(size: int, n: int = 2):
    g = torch.Generator().manual_seed(1)
    context = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    mask = torch.from_numpy(inpaint_mask(size))[None, None].expand(n, 1, size, size)
    return context, mask, torch.randn(n, 16, generator=g), torch.randn(n, 2, 8, 8, generator=g)


@pytest.mark.parametrize("size", [64, 128])
def test_shapes_dtypes_and_exact_context(size):
    renderer = _tiny(size)
    context, mask, z_id, z_attr = _inputs(size)
    with torch.no_grad():
        out = renderer(context, mask, z_id, z_attr, generator=torch.Generator().manual_seed(0))
    assert out.shape == context.shape and out.dtype == torch.float32
    assert out.abs().max() <= 1.0
    outside = mask.expand_as(out) == 0
    assert torch.equal(out[outside], context[outside])  # the context is kept, exactly
    assert not torch.allclose(out[~outside], context[~outside], atol=0.05)  # the inside is drawn


def test_the_original_under_the_mask_never_reaches_the_output():
    renderer = _tiny(64)
    context, mask, z_id, z_attr = _inputs(64)
    tampered = torch.where(mask.expand_as(context) > 0, torch.rand_like(context) * 2 - 1, context)
    with torch.no_grad():
        a = renderer(context, mask, z_id, z_attr, generator=torch.Generator().manual_seed(3))
        b = renderer(tampered, mask, z_id, z_attr, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_identity_code_changes_the_face():
    renderer = _tiny(64)
    with torch.no_grad():  # the FiLM layers start at zero: give them weights to make the code matter
        for module in renderer.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0, 0.5)
    context, mask, z_id, z_attr = _inputs(64)
    with torch.no_grad():
        a = renderer(context, mask, z_id, z_attr, generator=torch.Generator().manual_seed(0))
        b = renderer(context, mask, -z_id, z_attr, generator=torch.Generator().manual_seed(0))
    assert (a - b).abs().mean() > 1e-3


def test_save_and_load_round_trip_checks_the_sha256(tmp_path):
    renderer = _tiny(64)
    renderer.save_pretrained(tmp_path / "r", dtype=torch.float32)
    meta = json.loads((tmp_path / "r" / "config.json").read_text())
    assert meta["image_size"] == 64 and len(meta["sha256"]) == 64
    loaded = FaceRenderer.from_pretrained(tmp_path / "r")
    for (name, a), (_, b) in zip(renderer.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    weights = tmp_path / "r" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256"):
        FaceRenderer.from_pretrained(tmp_path / "r")
    with pytest.raises(ModelLoadError, match="train-renderer"):
        FaceRenderer.from_pretrained(tmp_path / "nothing")


def _smooth_faces(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Learnable stand-ins for faces: smooth colour gradients with a dark ellipse."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    faces = []
    for _ in range(n):
        a, b, c = rng.uniform(0.2, 0.8, 3)
        img = np.stack([a + 0.3 * xx, b + 0.3 * yy, c + 0.2 * (xx - yy)], axis=-1)
        img[((xx - 0.5) / 0.3) ** 2 + ((yy - 0.55) / 0.4) ** 2 < 1] *= 0.6
        faces.append(np.clip(img * 255, 0, 255).astype(np.uint8))
    return np.stack(faces)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny codes model + student + sampler + dataset, and two short train-renderer runs."""
    from idmrag_plugin.training.train_renderer import build_parser, train

    root = tmp_path_factory.mktemp("renderer")
    torch.manual_seed(0)
    DisentangledFaceVAE(CodesConfig(image_size=32, base_channels=8, id_dim=16, attr_channels=2)).save_pretrained(
        root / "codes")
    save_file(IdentityStudent(width=8).state_dict(), str(root / "student.safetensors"))
    rng = np.random.default_rng(0)
    n = 24
    np.savez(root / "data.npz", crops=_smooth_faces(n, 32, rng), identity=np.repeat(np.arange(n // 2), 2).astype(np.int32),
             split=np.array(["train"] * 20 + ["val"] * 4), emb_facenet=rng.standard_normal((n, 512)).astype(np.float32))
    IdentitySampler.fit(np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32),
                        np.repeat(np.arange(32), 2), components=2).save(root / "sampler.safetensors")
    argv = ["--data", str(root / "data.npz"), "--output", str(root / "run"), "--codes", str(root / "codes"),
            "--student", str(root / "student.safetensors"), "--size", "32", "--base-channels", "8",
            "--max-channels", "16", "--disc-channels", "8", "--batch", "8", "--checkpoint-every", "5",
            "--r1-every", "4", "--lr", "2e-3", "--threads", "1", "--weight", "adv=0.1"]
    first = train(build_parser().parse_args(argv + ["--steps", "2"]))
    second = train(build_parser().parse_args(argv + ["--steps", "60"]))
    return root, argv, first, second


def test_training_resumes_and_reconstruction_falls(tiny_run):
    root, _argv, first, second = tiny_run
    assert first["step"] == 2 and second["step"] == 60  # the second run resumed the first
    assert {"adv", "rec", "spectrum", "fm", "identity", "hinge", "d", "r1"} <= set(first)
    # one batch's loss each: 60 steps brought it to 0.69 of step 2's on one CPU, under 0.6 on another
    assert second["rec"] < 0.8 * first["rec"]
    assert (root / "run" / "samples.png").stat().st_size > 0
    renderer = FaceRenderer.from_pretrained(root / "run" / "renderer")
    assert renderer.config.image_size == 32 and renderer.config.codes_sha256


def test_training_refuses_a_checkpoint_of_another_config(tiny_run):
    from idmrag_plugin.training.train_renderer import build_parser, train

    _root, argv, _, _ = tiny_run
    with pytest.raises(ConfigError, match="another config"):
        train(build_parser().parse_args(argv + ["--steps", "61", "--max-channels", "32"]))


def _faces_in_bands(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Perceived gender, log age and identity (four faces a person) of ``n`` made-up faces."""
    gender = rng.random(n) < 0.5
    log_age = rng.uniform(np.log1p(5), np.log1p(80), n)
    return gender, log_age, np.repeat(np.arange(n // 4), 4).astype(np.int64)


def test_swap_partners_share_the_person_s_perceived_gender_and_age_band():
    from idmrag_plugin.training.train_renderer import PARTNER_AGE_BAND, matched_partners

    rng = np.random.default_rng(0)
    n = 400
    gender, log_age, identity = _faces_in_bands(rng, n)
    identity[:40] = -1  # unlabelled faces: all different people
    rows = rng.integers(0, n, 200)
    partners = matched_partners(gender, log_age, identity, rows, rng)
    assert (gender[partners] == gender[rows]).all()
    assert (np.floor(log_age[partners] / PARTNER_AGE_BAND) == np.floor(log_age[rows] / PARTNER_AGE_BAND)).all()
    others = (partners != rows) & ((identity[partners] < 0) | (identity[partners] != identity[rows]))
    assert others.mean() > 0.95
    # a band holding one face only: that face is its own partner rather than an error
    alone = matched_partners(np.array([True, False]), np.array([1.0, 3.0]), np.array([0, 1]), np.array([0, 1]), rng)
    assert alone.tolist() == [0, 1]


def test_consistency_pairs_draw_one_code_into_two_people_s_photos_of_one_band():
    from idmrag_plugin.training.train_renderer import PartnerBands, pair_contexts, pair_disagreement

    rng = np.random.default_rng(1)
    n = 400
    gender, log_age, identity = _faces_in_bands(rng, n)
    bands = PartnerBands(gender, log_age, identity)
    for _ in range(20):
        idx = rng.integers(0, n, 16)
        wanted = np.concatenate([idx[:8], bands.draw(idx[8:], rng)])
        paired, codes = pair_contexts(idx, wanted, 8, bands, rng)
        # the own-identity half and the even swapped rows are untouched
        assert (paired[:9] == idx[:9]).all() and (paired[8::2] == idx[8::2]).all() and (codes[:9] == wanted[:9]).all()
        # each odd swapped row: the code of the row before it, in another photo of the same band
        assert (codes[9::2] == codes[8::2]).all()
        assert (gender[paired[9::2]] == gender[paired[8::2]]).all()
        assert (identity[paired[9::2]] != identity[paired[8::2]]).mean() > 0.8
    # without bands: only the codes are paired, the photos stay the batch's own
    paired, codes = pair_contexts(idx, wanted, 8, None, rng)
    assert (paired == idx).all() and (codes[9::2] == codes[8::2]).all()
    emb = torch.nn.functional.normalize(torch.randn(7, 16), dim=1)
    assert pair_disagreement(emb[[0, 0, 1, 1, 2, 2, 3]]).item() < 1e-6  # an odd last row is left out
    assert pair_disagreement(emb[[0, 1, 2, 3, 4, 5]]).item() > 0.3


def _dlib_probes(path, reader: str = "dlib") -> None:
    from idmrag_plugin.generation.attributes import AttributeProbes

    rng = np.random.default_rng(5)
    AttributeProbes(image_gender=(rng.standard_normal(128), 0.0), image_age=(rng.standard_normal(128) * 0.1, 3.5),
                    code_gender=(rng.standard_normal(16), 0.0), code_age=(rng.standard_normal(16), 3.5),
                    renderer_sha256="x", image_reader=reader).save(path)


def test_fine_tuning_starts_from_trained_weights_and_adds_dlib_gender_age_and_landmark_terms(tiny_run, tmp_path):
    from idmrag_plugin.training.train_renderer import build_parser, train

    root, argv, _, _ = tiny_run
    data = dict(np.load(root / "data.npz"))
    dlib = np.random.default_rng(4).standard_normal((len(data["crops"]), 128)).astype(np.float32)
    data["emb_dlib"] = dlib / np.linalg.norm(dlib, axis=1, keepdims=True)
    np.savez(tmp_path / "data.npz", **data)
    _dlib_probes(tmp_path / "probes.safetensors")
    base = [a if a != str(root / "data.npz") else str(tmp_path / "data.npz") for a in argv]
    tune = base + ["--init", str(root / "run" / "renderer"), "--probes", str(tmp_path / "probes.safetensors"),
                   "--weight", "dlib=1", "--weight", "gender=1", "--weight", "age=1", "--weight", "speckle=1",
                   "--weight", "landmarks=1", "--weight", "consistency=1"]
    # no step yet: what it saves is the renderer it started from
    train(build_parser().parse_args(_output(tune, tmp_path / "zero") + ["--steps", "0"]))
    started = FaceRenderer.from_pretrained(tmp_path / "zero" / "renderer")
    trained = FaceRenderer.from_pretrained(root / "run" / "renderer").state_dict()
    assert all(torch.equal(started.state_dict()[k], trained[k]) for k in trained)
    # the fine-tuned renderer records the one it started from
    assert started.config.init_sha256 == json.loads((root / "run" / "renderer" / "config.json").read_text())["sha256"]
    summary = train(build_parser().parse_args(_output(tune, tmp_path / "tuned") + ["--steps", "3"]))
    assert summary["step"] == 3 and all(np.isfinite(summary[k]) for k in ("dlib", "gender", "age", "speckle", "landmarks", "consistency"))
    # fine-tuned again: the whole line of renderers it descends from, nearest first
    again = [a if a != str(root / "run" / "renderer") else str(tmp_path / "tuned" / "renderer") for a in tune]
    train(build_parser().parse_args(_output(again, tmp_path / "again") + ["--steps", "0"]))
    shas = [json.loads((d / "config.json").read_text())["sha256"] for d in (tmp_path / "tuned" / "renderer", root / "run" / "renderer")]
    assert list(FaceRenderer.from_pretrained(tmp_path / "again" / "renderer").config.ancestors()) == shas
    with pytest.raises(ConfigError, match="another config"):
        train(build_parser().parse_args(_output(tune, tmp_path / "wide") + ["--steps", "1", "--max-channels", "32"]))
    _dlib_probes(tmp_path / "student_probes.safetensors", reader="student")
    with pytest.raises(ConfigError, match="dlib reader"):
        train(build_parser().parse_args(_output(base, tmp_path / "other") + [
            "--steps", "1", "--probes", str(tmp_path / "student_probes.safetensors")]))
    with pytest.raises(ConfigError, match="--probes"):
        train(build_parser().parse_args(_output(base, tmp_path / "none") + ["--steps", "1", "--weight", "age=1"]))


def _output(argv: list[str], output) -> list[str]:
    at = argv.index("--output")
    return argv[:at + 1] + [str(output)] + argv[at + 2:]


def test_training_on_data_packed_small_measures_the_embeddings_it_lacks(tiny_run, tmp_path):
    """The GPU bundle's data (scripts/pack_gpu_bundle.py): WebP crops, no embeddings, a subset."""
    from idmrag_plugin.training.data import pack_dataset, unpack_crops
    from idmrag_plugin.training.train_codes import FaceData
    from idmrag_plugin.training.train_renderer import build_parser, train

    root, argv, _, _ = tiny_run
    counts = pack_dataset(root / "data.npz", tmp_path / "packed.npz", size=32, quality=90, fmt="webp",
                          embeddings=False, limit=12)
    packed = np.load(tmp_path / "packed.npz")
    assert counts["faces"] == 12 and not [k for k in packed.files if k.startswith("emb_")]
    originals = np.load(root / "data.npz")["crops"].astype(np.int16)
    crops = unpack_crops(packed)
    assert crops.shape == (12, 32, 32, 3)
    # each packed crop is one of the training split's, within WebP's error, and no two the same
    nearest = [np.abs(originals - c).mean(axis=(1, 2, 3)) for c in crops]
    assert max(float(d.min()) for d in nearest) < 4.0 and len({int(d.argmin()) for d in nearest}) == 12
    assert {int(d.argmin()) for d in nearest} <= set(range(20))  # the training split only
    data = FaceData(tmp_path / "packed.npz", 32, torch.device("cpu"))
    assert data.embeddings is None and data.embeddings_dlib_raw is None
    with pytest.raises(ConfigError, match="emb_facenet"):
        data.batch(4, np.random.default_rng(0))
    calls = []

    def student(x):
        calls.append("student")
        return x.flatten(1)[:, :8]

    data.measure_missing_embeddings(student, lambda x: x.flatten(1)[:, :128] + 2.0, batch=5,
                                    cache=tmp_path / "measured.pt", key="k")
    assert data.embeddings.shape == (12, 8)
    assert torch.allclose(data.embeddings_dlib_raw.norm(dim=1), torch.ones(12)) and data.embeddings_dlib is not None
    # a second run with the same key reads what the first measured; another key measures again
    again = FaceData(tmp_path / "packed.npz", 32, torch.device("cpu"))
    measured = len(calls)
    again.measure_missing_embeddings(student, lambda x: x.flatten(1)[:, :128] + 2.0, batch=5,
                                     cache=tmp_path / "measured.pt", key="k")
    assert len(calls) == measured and torch.equal(again.embeddings, data.embeddings)
    assert torch.equal(again.embeddings_dlib_raw, data.embeddings_dlib_raw)
    other = FaceData(tmp_path / "packed.npz", 32, torch.device("cpu"))
    other.measure_missing_embeddings(student, None, batch=5, cache=tmp_path / "measured.pt", key="other student")
    assert len(calls) > measured and other.embeddings_dlib_raw is None
    # the renderer's training measures them itself (student; dlib's torch port) and trains
    run = [a if a != str(root / "data.npz") else str(tmp_path / "packed.npz") for a in argv] + ["--weight", "dlib=1"]
    summary = train(build_parser().parse_args(_output(run, tmp_path / "run") + ["--steps", "2"]))
    assert summary["step"] == 2 and all(np.isfinite(summary[k]) for k in ("identity", "hinge", "dlib"))


def test_generator_draws_a_pseudonym_face_into_the_crop(tiny_run):
    root, *_ = tiny_run
    generator = RendererGenerator(root / "run" / "renderer", root / "codes", root / "sampler.safetensors")
    face = np.random.default_rng(2).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    out = generator.generate(GenerationRequest(face, attempt=0, seed=7))
    assert out.shape == face.shape and out.dtype == np.uint8
    inside = generator.mask(128) > 0.5
    assert np.array_equal(out[~inside], face[~inside])  # context kept exactly at full resolution
    assert not np.array_equal(out[inside], face[inside])
    assert np.array_equal(out, generator.generate(GenerationRequest(face, attempt=0, seed=7)))  # same pseudonym
    assert not np.array_equal(out, generator.generate(GenerationRequest(face, attempt=1, seed=7)))  # a retry
    assert generator.colour_match is False
    grey = np.repeat(face[..., :1], 3, axis=2)  # a black-and-white photo gets a black-and-white face
    drawn = generator.generate(GenerationRequest(grey, attempt=0, seed=7))
    assert np.array_equal(drawn[..., 0], drawn[..., 1]) and np.array_equal(drawn[..., 1], drawn[..., 2])


def test_a_128_px_renderer_s_drawing_never_reads_the_inner_face(tiny_run, tmp_path):
    """A renderer that draws at the crop's own 128 px gets the crop without resizing: its
    context still holds no pixel of the inner face."""
    from idmrag_plugin.generation.latent_diffusion import codes_fingerprint

    root, *_ = tiny_run
    torch.manual_seed(0)
    FaceRenderer(RendererConfig(image_size=128, base_channels=8, max_channels=16, id_dim=16, attr_channels=2,
                                style_dim=16, codes_sha256=codes_fingerprint(root / "codes"))).save_pretrained(
        tmp_path / "r128", dtype=torch.float32)
    generator = RendererGenerator(tmp_path / "r128", root / "codes", root / "sampler.safetensors")
    face = np.random.default_rng(4).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    tampered = face.copy()
    inside = generator.mask(128) > 0.5
    tampered[inside] = 255 - tampered[inside]
    codes = np.random.default_rng(5).standard_normal((2, 16)).astype(np.float32)
    _, attr = generator._encoded(face)
    drawn = generator._draw(codes, face, attr)
    assert drawn.shape == (2, 3, 128, 128)
    assert torch.equal(drawn, generator._draw(codes, tampered, attr))


def _scored_drawings(generator, monkeypatch, scores: dict[bytes, float], unfit: str = "speckled") -> list[np.ndarray]:
    """Record the codes ``generator`` draws (one array per drawing call, returned list) and make
    each drawing as unfit as ``scores`` says for its code (1 = at the limit; unlisted codes 0.3,
    fit), speckled, washed out, with a smudged forehead or with glasses added."""
    from idmrag_plugin.generation import ghost
    from idmrag_plugin.generation.renderer_generator import GHOST_LIMIT, SPECKLE_LIMIT

    drawn_codes: list[np.ndarray] = []
    draw = generator._draw

    def recording(some_codes, *args, **kwargs):
        drawn_codes.append(np.array(some_codes))
        return draw(some_codes, *args, **kwargs)

    def unfitness_of_last_drawn() -> np.ndarray:
        return np.array([scores.get(c.tobytes(), 0.3) for c in drawn_codes[-1]])

    monkeypatch.setattr(generator, "_draw", recording)
    monkeypatch.setattr(generator, "speckle", lambda drawn, grow=None: np.zeros(len(drawn)))
    monkeypatch.setattr(ghost, "ghost_ratio", lambda drawn, face: np.ones(len(drawn)))
    for screen in ("smudged", "smudged_chin", "dropped_beard", "darkened_eyes", "misexpressed"):
        monkeypatch.setattr(generator, screen, lambda shown, face: 0.0)
    monkeypatch.setattr(generator, "glasses_off", lambda shown, face, descriptor=None: 0.0)
    if unfit == "speckled":
        monkeypatch.setattr(generator, "speckle", lambda drawn, grow=None: unfitness_of_last_drawn() * SPECKLE_LIMIT)
    elif unfit == "washed out":
        monkeypatch.setattr(ghost, "ghost_ratio", lambda drawn, face: GHOST_LIMIT / unfitness_of_last_drawn())
    elif unfit == "smudged forehead":  # judged on the drawing as shown (drawn last)
        monkeypatch.setattr(generator, "smudged", lambda shown, face: float(unfitness_of_last_drawn()[0]))
    elif unfit == "added glasses":
        monkeypatch.setattr(generator, "glasses_off",
                            lambda shown, face, descriptor=None: float(unfitness_of_last_drawn()[0]))
    else:  # the mouth opened or closed otherwise than the photo's, judged on the drawing as shown
        monkeypatch.setattr(generator, "misexpressed", lambda shown, face: float(unfitness_of_last_drawn()[0]))
    return drawn_codes


def test_a_new_pseudonym_must_keep_the_mouth_the_person_s_own_need_not(tiny_run, monkeypatch):
    """A drawing that opens or closes the mouth otherwise than the photo gives way to the next
    code; the person's own pseudonym, kept from an earlier photo, is not judged on it (their
    expression changes from photo to photo, their pseudonym should not)."""
    from idmrag_plugin.generation.renderer_generator import SPECKLE_ALTERNATES

    root, *_ = tiny_run
    generator = RendererGenerator(root / "run" / "renderer", root / "codes", root / "sampler.safetensors", secret=b"s")
    face = np.random.default_rng(2).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    code, attr = (a[0] for a in generator.encode(face[None]))
    codes = generator.pseudonym_codes(code, 0, 1 + SPECKLE_ALTERNATES)
    scores = {codes[0].tobytes(): 3.0}
    drawn_codes = _scored_drawings(generator, monkeypatch, scores, "mouth")
    out = generator.generate(GenerationRequest(face, attempt=0, seed=7))
    assert np.array_equal(out, generator._composite(generator._render(codes[1][None], face, attr[None])[0], face))
    # the person's next photo: their own code draws the mouth otherwise there, and stays
    scores[codes[1].tobytes()] = 3.0
    again = np.clip(face.astype(np.int16) + 3, 0, 255).astype(np.uint8)
    drawn_codes.clear()
    generator.generate(GenerationRequest(again, attempt=0, seed=8))
    assert len(drawn_codes) == 1 and np.array_equal(drawn_codes[0], codes[1][None])
    # a retry (the face refused once) is free of it: its first code stays however it draws the mouth
    other = np.random.default_rng(9).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    first_retry = generator.pseudonym_codes(generator.encode(other[None])[0][0], 1, 1)[0]
    scores[first_retry.tobytes()] = 3.0
    drawn_codes.clear()
    generator.generate(GenerationRequest(other, attempt=1, seed=9))
    assert len(drawn_codes) == 1 and np.array_equal(drawn_codes[0], first_retry[None])


def test_the_mouth_s_opening_is_read_from_the_inner_lips():
    from idmrag_plugin.generation.expression import mouth_opening

    points = np.zeros((68, 2))
    points[27], points[8] = (64, 50), (64, 110)  # bridge to chin: 60 px
    for upper, lower in ((61, 67), (62, 66), (63, 65)):
        points[upper] = points[lower] = (60 + upper - 61, 95)
    assert mouth_opening(points) == 0.0
    for lower in (67, 66, 65):
        points[lower, 1] += 6.0
    assert mouth_opening(points) == pytest.approx(0.1)


@pytest.mark.parametrize("unfit", ["speckled", "washed out", "smudged forehead", "added glasses"])
def test_a_pseudonym_drawn_unfit_gives_way_to_an_alternate_kept_for_the_person(tiny_run, monkeypatch, unfit):
    from idmrag_plugin.generation.renderer_generator import FURTHER_ALTERNATES, SPECKLE_ALTERNATES

    root, *_ = tiny_run
    generator = RendererGenerator(root / "run" / "renderer", root / "codes", root / "sampler.safetensors", secret=b"s")
    face = np.random.default_rng(2).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    code, attr = (a[0] for a in generator.encode(face[None]))
    codes = generator.pseudonym_codes(code, 0, 1 + SPECKLE_ALTERNATES)
    assert np.array_equal(codes[0], generator.replacement_code(code, 0))
    assert len({c.tobytes() for c in codes}) == len(codes) == 1 + SPECKLE_ALTERNATES
    # how unfit each code's drawing is (1 = at the limit); the rest draw fit
    scores = {codes[0].tobytes(): 5.0, codes[1].tobytes(): 4.0}
    drawn_codes = _scored_drawings(generator, monkeypatch, scores, unfit)
    out = generator.generate(GenerationRequest(face, attempt=0, seed=7))
    # the first clean alternate in order, drawn and composited as any pseudonym
    assert np.array_equal(out, generator._composite(generator._render(codes[2][None], face, attr[None])[0], face))
    # the person's next photo tries that code first, and keeps it where it draws clean
    again = np.clip(face.astype(np.int16) + 3, 0, 255).astype(np.uint8)
    drawn_codes.clear()
    generator.generate(GenerationRequest(again, attempt=0, seed=8))
    assert len(drawn_codes) == 1 and np.array_equal(drawn_codes[0], codes[2][None])
    # kept by value: a photo whose codes pass the sampler's rules differently (codes[1] not
    # distinct from it, say) still starts with the kept code, wherever it stands in its list
    all_codes = generator.pseudonym_codes
    monkeypatch.setattr(generator, "pseudonym_codes", lambda c, a, n: np.stack(
        [z for z in all_codes(c, a, n + 1) if not np.array_equal(z, codes[1])][:n]))
    drawn_codes.clear()
    generator.generate(GenerationRequest(again, attempt=0, seed=10))
    assert len(drawn_codes) == 1 and np.array_equal(drawn_codes[0], codes[2][None])
    monkeypatch.setattr(generator, "pseudonym_codes", all_codes)
    # none of the kept code and its three alternates fit: further codes in the same order, until one is
    scores.update({codes[2].tobytes(): 4.5, codes[3].tobytes(): 3.0})
    more = generator.pseudonym_codes(code, 0, 1 + SPECKLE_ALTERNATES + FURTHER_ALTERNATES)
    assert np.array_equal(more[: len(codes)], codes) and len({c.tobytes() for c in more}) == len(more)
    drawn_codes.clear()
    further = generator.generate(GenerationRequest(face, attempt=0, seed=9))
    assert [d[0].tobytes() for d in drawn_codes] == [c.tobytes() for c in (codes[2], codes[0], codes[1], codes[3], more[4])]
    assert np.array_equal(further, generator._composite(generator._render(more[4][None], face, attr[None])[0], face))
    drawn_codes.clear()
    generator.generate(GenerationRequest(again, attempt=0, seed=10))  # the person's next photo starts with it
    assert len(drawn_codes) == 1 and np.array_equal(drawn_codes[0], more[4][None])
    # nothing fit: the least unfit of all (the kept code's score divided by KEPT_UNFITNESS)
    scores.update({c.tobytes(): 2.5 for c in more[4:]})
    scores[more[7].tobytes()] = 1.1
    drawn_codes.clear()
    worst_case = generator.generate(GenerationRequest(face, attempt=0, seed=11))
    assert len(drawn_codes) == 1 + SPECKLE_ALTERNATES + FURTHER_ALTERNATES
    assert np.array_equal(worst_case, generator._composite(generator._render(more[7][None], face, attr[None])[0], face))


@pytest.mark.refuses_unfit
def test_an_attempt_whose_least_unfit_drawing_is_still_grossly_unfit_is_refused(tiny_run, monkeypatch):
    from idmrag_plugin.errors import UnfitDrawingError
    from idmrag_plugin.generation.renderer_generator import (
        FURTHER_ALTERNATES,
        GROSSLY_UNFIT,
        SPECKLE_ALTERNATES,
    )

    root, *_ = tiny_run
    generator = RendererGenerator(root / "run" / "renderer", root / "codes", root / "sampler.safetensors", secret=b"s")
    face = np.random.default_rng(3).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    code, attr = (a[0] for a in generator.encode(face[None]))
    codes = generator.pseudonym_codes(code, 0, 1 + SPECKLE_ALTERNATES + FURTHER_ALTERNATES)
    scores = {c.tobytes(): GROSSLY_UNFIT + 1.0 for c in codes}
    scores[codes[5].tobytes()] = GROSSLY_UNFIT  # the least unfit, still too far off to show
    drawn_codes = _scored_drawings(generator, monkeypatch, scores)
    with pytest.raises(UnfitDrawingError, match="least by"):
        generator.generate(GenerationRequest(face, attempt=0, seed=7))
    assert len(drawn_codes) == len(codes)
    scores[codes[5].tobytes()] = GROSSLY_UNFIT - 0.2  # unfit, but not that far: kept
    out = generator.generate(GenerationRequest(face, attempt=0, seed=7))
    assert np.array_equal(out, generator._composite(generator._render(codes[5][None], face, attr[None])[0], face))


def test_a_person_s_pseudonym_drawn_a_little_unfit_in_a_later_photo_stays_theirs(tiny_run, monkeypatch):
    from idmrag_plugin.generation.renderer_generator import KEPT_UNFITNESS, SPECKLE_ALTERNATES

    assert KEPT_UNFITNESS > 1.0
    root, *_ = tiny_run
    face = np.random.default_rng(2).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    again = np.clip(face.astype(np.int16) + 3, 0, 255).astype(np.uint8)  # the same person's next photo
    a_little, clearly = (1.0 + KEPT_UNFITNESS) / 2, 1.5 * KEPT_UNFITNESS

    def drawn_for(first_photo_score: float, next_photo_score: float) -> list[bool]:
        """For each drawing made for the person's next photo, whether it was of their own
        pseudonym, when that scores ``next_photo_score`` there (``first_photo_score`` in their
        first photo); every other code draws fit."""
        generator = RendererGenerator(root / "run" / "renderer", root / "codes", root / "sampler.safetensors",
                                      secret=b"s")
        code = generator.encode(face[None])[0][0]
        codes = generator.pseudonym_codes(code, 0, 1 + SPECKLE_ALTERNATES)
        scores = {codes[0].tobytes(): first_photo_score}
        drawn = _scored_drawings(generator, monkeypatch, scores)
        generator.generate(GenerationRequest(face, attempt=0, seed=7))
        if first_photo_score > 1.0:  # an unfit first drawing is replaced at once, whatever its margin
            assert [d.tobytes() for d in drawn] == [codes[0][None].tobytes(), codes[1][None].tobytes()]
            return []
        scores[codes[0].tobytes()] = next_photo_score
        drawn.clear()
        generator.generate(GenerationRequest(again, attempt=0, seed=8))
        return [np.array_equal(d, codes[0][None]) for d in drawn]

    assert drawn_for(0.3, a_little) == [True]  # kept: one drawing, the person's own code
    assert drawn_for(0.3, clearly) == [True, False]  # replaced there by the first fit alternate
    assert drawn_for(a_little, 0.3) == []


def test_tone_shift_moves_the_face_mean_and_leaves_kept_pixels_alone():
    from idmrag_plugin.engine.blend import face_mask, shift_tone

    rng = np.random.default_rng(3)
    size = 128
    drawn = np.clip(rng.normal(60, 12, (size, size, 3)), 0, 255).astype(np.uint8)  # a dark drawing
    reference = np.clip(rng.normal(190, 12, (size, size, 3)) * [1.0, 0.85, 0.75], 0, 255).astype(np.uint8)
    inner, outer = face_mask(size), inpaint_mask(size, 1.1)
    out = shift_tone(drawn, reference, inner, outer)
    assert np.array_equal(out[outer < 0.5], drawn[outer < 0.5])

    def mean_lab(image):
        return cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float64)[inner > 0.5].mean(axis=0)

    assert np.abs(mean_lab(drawn) - mean_lab(reference)).max() > 50
    assert np.abs(mean_lab(out) - mean_lab(reference)).max() < 3
    assert np.array_equal(shift_tone(drawn, reference, np.zeros_like(inner), outer), drawn)  # nothing to match


def test_tone_shift_removes_green_and_blue_casts_and_keeps_red():
    from idmrag_plugin.engine.blend import CAST_LIMIT, face_mask, shift_tone

    size = 128
    skin = np.array([200, 150, 120], np.uint8)
    reference = np.tile(skin, (size, size, 1))
    drawn = reference.copy()
    drawn[60:70, 40:50] = (120, 200, 140)  # a green glow on a cheek
    drawn[90:96, 56:72] = (200, 80, 90)  # red lips
    inner, outer = face_mask(size), inpaint_mask(size, 1.1)
    out = shift_tone(drawn, reference, inner, outer)
    lab = cv2.cvtColor(out, cv2.COLOR_RGB2LAB).astype(np.float32)
    target = cv2.cvtColor(reference, cv2.COLOR_RGB2LAB).astype(np.float32)[0, 0]
    green = lab[60:70, 40:50, 1]
    assert cv2.cvtColor(drawn, cv2.COLOR_RGB2LAB)[60:70, 40:50, 1].min() < target[1] - 3 * CAST_LIMIT[0]
    assert green.min() >= target[1] - CAST_LIMIT[0] - 2  # the cast is gone (up to 8-bit rounding)
    lips = cv2.cvtColor(drawn, cv2.COLOR_RGB2LAB).astype(np.float32)[90:96, 56:72, 1].mean()
    assert abs(lab[90:96, 56:72, 1].mean() - lips) < 3  # redder than skin stays (the mean moved a little)
    assert np.array_equal(out[outer < 0.5], drawn[outer < 0.5])


@pytest.mark.parametrize("blend", ["tone", "poisson-tone"])
def test_generator_keeps_the_photo_s_mean_skin_tone(tiny_run, blend):
    """A pseudonym of another complexion is not drawn into the person's own neck and ears."""
    from idmrag_plugin.engine.blend import face_mask

    root, *_ = tiny_run
    generator = RendererGenerator(root / "run" / "renderer", root / "codes", root / "sampler.safetensors", blend=blend)
    for colour in ((230, 190, 170), (90, 60, 45)):
        face = np.clip(np.random.default_rng(4).normal(0, 8, (128, 128, 3)) + colour, 0, 255).astype(np.uint8)
        out = generator.generate(GenerationRequest(face, attempt=0, seed=7))
        inner = face_mask(128) > 0.5
        lab_out = cv2.cvtColor(out, cv2.COLOR_RGB2LAB).astype(np.float64)[inner].mean(axis=0)
        lab_face = cv2.cvtColor(face, cv2.COLOR_RGB2LAB).astype(np.float64)[inner].mean(axis=0)
        # the tiny renderer draws colours 60 steps leave far off; the tone match brings their mean
        # within a few levels of the photo's (up to 4.2 seen in a fresh checkout), while the two
        # complexions here are 132 levels apart in lightness
        assert np.abs(lab_out - lab_face).max() < 6, (lab_out, lab_face)


def test_generator_s_poisson_blends_leave_no_seam(tiny_run, astronaut, monkeypatch):
    """Where the drawing meets the kept photo, the Poisson blends step by little; the hard
    edge of ``tone`` by much more (an untrained renderer draws noise). The screens that judge
    the drawing as composited would pick another code for one blend than for another: planted
    fit, every blend shows the same code."""
    root, *_ = tiny_run
    face = cv2.resize(astronaut[20:260, 120:360], (128, 128), interpolation=cv2.INTER_AREA)
    steps = {}
    assert RendererGenerator(root / "run" / "renderer", root / "codes", root / "sampler.safetensors").blend == "poisson-tone"
    for blend in ("poisson-tone", "poisson", "tone"):
        # the edge measured is the ellipse's: the photo is not kept inside it around the faces
        generator = RendererGenerator(root / "run" / "renderer", root / "codes", root / "sampler.safetensors", blend=blend,
                                      keep_outside_face=False)
        for screen in ("smudged", "smudged_chin", "dropped_beard", "darkened_eyes", "misexpressed"):
            monkeypatch.setattr(generator, screen, lambda shown, face: 0.0)
        out = generator.generate(GenerationRequest(face, attempt=0, seed=7)).astype(np.float64)
        inside = generator.mask(128) > 0.5
        assert np.array_equal(out[~inside], face[~inside])
        edge = inside & ~cv2.erode(inside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        outside = cv2.dilate(inside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~inside
        steps[blend] = abs(out[edge].mean() - face[outside].mean())
    assert steps["poisson"] < 4 and steps["poisson-tone"] < 4
    assert steps["tone"] > 2 * max(steps["poisson"], steps["poisson-tone"])
    with pytest.raises(ModelLoadError, match="blend"):
        RendererGenerator(root / "run" / "renderer", root / "codes", root / "sampler.safetensors", blend="feather")


def test_late_attempts_redraw_a_wider_ellipse_and_are_pasted_over_it(tiny_run):
    """Faces still recognised after two pseudonyms get the widest ellipse the renderer was
    trained with; the engine pastes each attempt over the ellipse it was drawn in."""
    from idmrag_plugin.generation.renderer import MASK_JITTER
    from idmrag_plugin.generation.renderer_generator import WIDER_MASK_FROM_ATTEMPT

    root, *_ = tiny_run
    generator = RendererGenerator(root / "run" / "renderer", root / "codes", root / "sampler.safetensors")
    face = np.random.default_rng(5).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    base = generator.mask_grow_for(0)
    assert base == generator.mask_grow_for(WIDER_MASK_FROM_ATTEMPT - 1) == pytest.approx(1.1)
    wide = generator.mask_grow_for(WIDER_MASK_FROM_ATTEMPT)
    assert wide == pytest.approx(base * MASK_JITTER[1])
    assert [generator.paste_grow_for(a) for a in (0, WIDER_MASK_FROM_ATTEMPT)] == [base, wide]
    narrow_mask, wide_mask = generator.mask(128) > 0.5, generator.mask(128, wide) > 0.5
    band = wide_mask & ~narrow_mask
    assert band.sum() > 500
    early = generator.generate(GenerationRequest(face, attempt=0, seed=7))
    late = generator.generate(GenerationRequest(face, attempt=WIDER_MASK_FROM_ATTEMPT, seed=7))
    assert np.array_equal(early[band], face[band])
    assert (late[band] != face[band]).any(axis=-1).mean() > 0.9
    assert np.array_equal(late[~wide_mask], face[~wide_mask])


def test_generator_refuses_a_renderer_trained_on_other_codes(tiny_run, tmp_path):
    root, *_ = tiny_run
    torch.manual_seed(5)
    DisentangledFaceVAE(CodesConfig(image_size=32, base_channels=8, id_dim=16, attr_channels=2)).save_pretrained(
        tmp_path / "other_codes")
    generator = RendererGenerator(root / "run" / "renderer", tmp_path / "other_codes", root / "sampler.safetensors")
    with pytest.raises(ModelLoadError, match="retrain"):
        generator.generate(GenerationRequest(np.zeros((64, 64, 3), np.uint8), attempt=0, seed=1))


def test_engine_with_a_renderer_keeps_pixels_outside_the_faces(tiny_run, astronaut):
    root, *_ = tiny_run
    generator = RendererGenerator(root / "run" / "renderer", root / "codes", root / "sampler.safetensors")
    engine = FaceAnonymizer(AnonymizerConfig(rotations=(0,), cache_size=0), generator=generator)
    result = engine.anonymize(astronaut)
    assert len(result.faces) == 1
    face = result.faces[0]
    # a random renderer is not verified anonymous by luck every time: whatever the outcome,
    # the face region changed and far-away pixels did not
    x1, y1, x2, y2 = (int(v) for v in face.detection.box)
    out = np.asarray(result.pixels)
    assert not np.array_equal(out[y1:y2, x1:x2], astronaut[y1:y2, x1:x2])
    assert np.array_equal(out[400:, :100], astronaut[400:, :100])
    assert face.method in ("generated", "obfuscated") and face.attempts >= 1


def test_packaged_renderer_loads_with_its_sha256_and_replaces_a_face(make_engine, astronaut, oracles):
    """The shipped renderer, through the whole engine: a generated face passes every oracle or
    the face fails closed; either way the output is not the original person."""
    from idmrag_plugin.generation.latent_diffusion import codes_fingerprint
    from idmrag_plugin.weights import CODES_VAE_DIR, RENDERER_DIR, packaged

    renderer = FaceRenderer.from_pretrained(packaged(RENDERER_DIR))  # checks the recorded sha256
    assert renderer.config.codes_sha256 == codes_fingerprint(packaged(CODES_VAE_DIR))
    anonymize_with_packaged_generator(make_engine, astronaut, oracles, generator="renderer", cache_size=0)


def test_pseudonym_codes_are_drawn_with_the_person_s_perceived_gender_and_age(tiny_run, tmp_path):
    """Planted probes: the photo probes call everyone 'side True' (bias +1) or 'side False'
    (bias -1), aged 30; the code probes say the renderer draws side True when a code's first
    value is positive, aged about 30 when its second is near 0 (log-age 3.43 + code[1] / 4). Every
    pseudonym then follows the person's side and age; without the probes some do not."""
    from idmrag_plugin.generation.attributes import AGE_TOLERANCE, AttributeProbes
    from idmrag_plugin.generation.vae_generator import SUITED_ATTEMPTS

    root, *_ = tiny_run
    sha = json.loads((root / "run" / "renderer" / "config.json").read_text())["sha256"]
    code_weight, age_weight = np.zeros(16), np.zeros(16)
    code_weight[0], age_weight[1] = 1.0, 0.25
    thirty = float(np.log1p(30.0))
    face = np.random.default_rng(2).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    for bias in (1.0, -1.0):
        AttributeProbes((np.zeros(512), bias), (np.zeros(512), thirty), (code_weight, 0.0), (age_weight, thirty),
                        sha).save(tmp_path / "probes.safetensors")
        keeping = RendererGenerator(root / "run" / "renderer", root / "codes", root / "sampler.safetensors",
                                    secret=b"s", attribute_probes_path=tmp_path / "probes.safetensors",
                                    student_path=root / "student.safetensors")
        keeping._load()
        code = keeping.encode(face[None])[0][0]
        keeping._note_person(code, face)
        for attempt in range(SUITED_ATTEMPTS):
            drawn = keeping.replacement_code(code, attempt)
            assert (drawn[0] > 0) == (bias > 0) and abs(drawn[1]) / 4 <= AGE_TOLERANCE
        # after that many failed verifications a pseudonym need not suit: either side may come
        assert {bool(keeping.replacement_code(code, a)[0] > 0) for a in range(SUITED_ATTEMPTS, 12)} == {True, False}
    plain = RendererGenerator(root / "run" / "renderer", root / "codes", root / "sampler.safetensors", secret=b"s")
    plain._load()
    code = plain.encode(face[None])[0][0]
    drawn = [plain.replacement_code(code, attempt) for attempt in range(12)]
    assert {bool(z[0] > 0) for z in drawn} == {True, False}  # without the probes the sampler draws either
    assert any(abs(z[1]) / 4 > AGE_TOLERANCE for z in drawn)


def test_attribute_probes_of_another_renderer_are_refused(tiny_run, tmp_path):
    from idmrag_plugin.generation.attributes import AttributeProbes

    root, *_ = tiny_run
    zeros = (np.zeros(512), 1.0)
    AttributeProbes(zeros, zeros, (np.zeros(16), 0.0), (np.zeros(16), 0.0), "0" * 64).save(tmp_path / "probes.safetensors")
    generator = RendererGenerator(root / "run" / "renderer", root / "codes", root / "sampler.safetensors",
                                  attribute_probes_path=tmp_path / "probes.safetensors",
                                  student_path=root / "student.safetensors")
    with pytest.raises(ModelLoadError, match="fit-attribute-probes"):
        generator.generate(GenerationRequest(np.zeros((64, 64, 3), np.uint8), attempt=0, seed=1))
    with pytest.raises(ModelLoadError, match="both"):
        RendererGenerator(root / "run" / "renderer", root / "codes", root / "sampler.safetensors",
                          attribute_probes_path=tmp_path / "probes.safetensors")


@pytest.mark.parametrize("reader", ["student", "dlib"])
def test_fit_attribute_probes_reads_labels_and_the_renderer_it_describes(tiny_run, tmp_path, reader):
    from idmrag_plugin.generation.attributes import AttributeProbes
    from idmrag_plugin.training.fit_attribute_probes import build_parser, fit

    root, *_ = tiny_run
    data = dict(np.load(root / "data.npz"))
    brightness = data["crops"].reshape(len(data["crops"]), -1).mean(axis=1)
    data["gender"] = (brightness > np.median(brightness)).astype(np.int8)
    data["age"] = (20 + brightness / 4).astype(np.int16)
    args = ["--data", str(tmp_path / "labelled.npz"), "--output", str(tmp_path / "probes.safetensors"),
            "--renderer", str(root / "run" / "renderer"), "--codes", str(root / "codes"),
            "--sampler", str(root / "sampler.safetensors"), "--student", str(root / "student.safetensors"),
            "--draws", "64", "--threads", "1", "--reader", reader]
    if reader == "dlib":
        np.savez(tmp_path / "labelled.npz", **data)
        with pytest.raises(ConfigError, match="emb_dlib"):  # said clearly when the data lacks them
            fit(build_parser().parse_args(args))
        data["emb_dlib"] = np.random.default_rng(3).standard_normal((len(data["crops"]), 128)).astype(np.float32)
    np.savez(tmp_path / "labelled.npz", **data)
    width = 128 if reader == "dlib" else 512
    try:
        fitted = fit(build_parser().parse_args(args))
    except ConfigError as exc:  # a random tiny renderer may draw one side only: said clearly
        assert "one class" in str(exc)
    else:
        loaded = AttributeProbes.load(tmp_path / "probes.safetensors")
        assert loaded.code_age[0].shape == (16,) and loaded.image_gender[0].shape == (width,)
        assert loaded.image_reader == reader
        assert np.allclose(loaded.code_gender[0], fitted.code_gender[0], atol=1e-6)
        assert loaded.renderer_sha256 == json.loads((root / "run" / "renderer" / "config.json").read_text())["sha256"]
    del data["gender"]
    np.savez(tmp_path / "unlabelled.npz", **data)
    with pytest.raises(ConfigError, match="gender labels"):
        fit(build_parser().parse_args(["--data", str(tmp_path / "unlabelled.npz")] + args[2:]))

def test_fit_attribute_probes_can_keep_the_code_probes_and_bounds_age_readings(tiny_run, tmp_path):
    """``--code-probes``: the image probes are refitted, the code probes kept bit for bit (a code
    LCM trained on them stays valid); photo age readings are held to the labels' range."""
    from dataclasses import replace

    from idmrag_plugin.generation.attributes import AttributeProbes
    from idmrag_plugin.training.fit_attribute_probes import build_parser, fit

    root, *_ = tiny_run
    rng = np.random.default_rng(4)
    data = dict(np.load(root / "data.npz"))
    n = len(data["crops"])
    data["emb_dlib"] = rng.standard_normal((n, 128)).astype(np.float32)
    data["gender"] = (data["emb_dlib"][:, 0] > 0).astype(np.int8)
    data["age"] = np.clip(np.expm1(3.4 + 0.3 * data["emb_dlib"][:, 1]), 1, 100).astype(np.int16)
    # UTKFace's five perceived-group labels, by the third value's quintile
    data["race"] = np.searchsorted(np.quantile(data["emb_dlib"][:, 2], [0.2, 0.4, 0.6, 0.8]),
                                   data["emb_dlib"][:, 2]).astype(np.int8)
    np.savez(tmp_path / "labelled.npz", **data)
    sha = json.loads((root / "run" / "renderer" / "config.json").read_text())["sha256"]
    kept = AttributeProbes((np.zeros(128), 0.0), (np.zeros(128), 3.0), (rng.standard_normal(16), 0.3),
                           (rng.standard_normal(16), 3.4), sha, image_reader="dlib")
    kept.save(tmp_path / "kept.safetensors")
    args = ["--data", str(tmp_path / "labelled.npz"), "--output", str(tmp_path / "probes.safetensors"),
            "--renderer", str(root / "run" / "renderer"), "--codes", str(root / "codes"),
            "--sampler", str(root / "sampler.safetensors"), "--code-probes", str(tmp_path / "kept.safetensors"),
            "--threads", "1"]
    fit(build_parser().parse_args(args))
    probes = AttributeProbes.load(tmp_path / "probes.safetensors")
    assert probes.code_fingerprint() == kept.code_fingerprint()
    assert kept.code_tone is None and probes.code_tone is not None and probes.code_tone[0].shape == (16,)
    # the group probe reads the labels from the descriptors, as probabilities
    assert kept.image_group is None and probes.image_group is not None
    groups = probes.read_group(data["emb_dlib"])
    assert groups.shape == (n, 5) and np.allclose(groups.sum(axis=1), 1.0)
    assert np.mean(groups.argmax(axis=1) == data["race"]) > 0.8
    assert all(r.group is not None and len(r.group) == 5 for r in probes.read_image(data["emb_dlib"][:3]))
    # --image-probes as well: only the tone probe is fitted, everything else kept bit for bit
    fit(build_parser().parse_args(args + ["--image-probes", str(tmp_path / "probes.safetensors"),
                                          "--output", str(tmp_path / "toned.safetensors")]))
    toned = AttributeProbes.load(tmp_path / "toned.safetensors")
    assert toned.code_fingerprint() == kept.code_fingerprint()
    for name in ("image_gender", "image_age"):
        assert np.array_equal(getattr(toned, name)[0], getattr(probes, name)[0])
    assert np.array_equal(toned.image_age_net.w1, probes.image_age_net.w1) and toned.age_range == probes.age_range
    assert np.allclose(toned.code_tone[0], probes.code_tone[0])  # the same faces, the same fit
    assert np.allclose(toned.image_group[0], probes.image_group[0], atol=1e-4)
    assert not np.allclose(probes.image_age[0], kept.image_age[0])  # refitted: reads the labels
    train = data["split"] == "train"
    low, high = np.percentile(np.log1p(data["age"][train].astype(np.float64)), [1, 99])
    assert probes.age_range == pytest.approx((low, high), abs=1e-9)
    # a photo's age is read by the network ensemble, held to the labels' range
    assert probes.image_age_net is not None
    faces = rng.standard_normal((20, 128))
    assert [r.log_age for r in probes.read_image(faces)] == [
        round(float(np.clip(a, low, high)), 2) for a in probes.image_age_net(faces)]
    linear = replace(probes, image_age_net=None)
    far = probes.image_age[0] / np.linalg.norm(probes.image_age[0]) * 1e3  # far beyond any training face
    assert [r.log_age for r in linear.read_image(np.stack([far, -far]))] == [round(high, 2), round(low, 2)]
    other = AttributeProbes(kept.image_gender, kept.image_age, kept.code_gender, kept.code_age, "0" * 64)
    other.save(tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match="describes renderer"):
        fit(build_parser().parse_args(args[:-4] + ["--code-probes", str(tmp_path / "other.safetensors"),
                                                   "--threads", "1"]))


def test_code_probes_for_a_new_renderer_need_no_dlib_descriptors_when_the_image_probes_are_kept(tiny_run, tmp_path):
    """Refitting the code probes for a retrained renderer judges its drawings with dlib itself:
    data prepared without oracles will do when the image probes (which read the data's
    descriptors) are kept."""
    from idmrag_plugin.generation.attributes import AttributeProbes
    from idmrag_plugin.training.fit_attribute_probes import build_parser, fit

    root, *_ = tiny_run
    data = dict(np.load(root / "data.npz"))
    assert "emb_dlib" not in data
    data["gender"] = np.arange(len(data["crops"])).astype(np.int8) % 2
    data["age"] = np.full(len(data["crops"]), 30, np.int16)
    np.savez(tmp_path / "plain.npz", **data)
    rng = np.random.default_rng(6)
    image = AttributeProbes((rng.standard_normal(128), 0.0), (rng.standard_normal(128) * 0.01, 3.4),
                            (np.zeros(16), 0.0), (np.zeros(16), 3.4), "0" * 64, image_reader="dlib")
    image.save(tmp_path / "image.safetensors")
    args = ["--data", str(tmp_path / "plain.npz"), "--output", str(tmp_path / "probes.safetensors"),
            "--renderer", str(root / "run" / "renderer"), "--codes", str(root / "codes"),
            "--sampler", str(root / "sampler.safetensors"), "--draws", "64", "--threads", "1",
            "--image-probes", str(tmp_path / "image.safetensors")]
    try:
        fit(build_parser().parse_args(args))
    except ConfigError as exc:  # a random tiny renderer may draw one side only: said clearly
        assert "one class" in str(exc)
    else:
        probes = AttributeProbes.load(tmp_path / "probes.safetensors")
        assert np.array_equal(probes.image_gender[0], image.image_gender[0])
        assert probes.renderer_sha256 == json.loads((root / "run" / "renderer" / "config.json").read_text())["sha256"]
        assert probes.code_age[0].shape == (16,) and not np.array_equal(probes.code_age[0], image.code_age[0])
    with pytest.raises(ConfigError, match="emb_dlib"):  # fitting the image probes does read them
        fit(build_parser().parse_args(args[:-2]))


def test_an_age_probe_is_regularised_as_far_as_cross_validation_allows():
    from idmrag_plugin.training.fit_attribute_probes import RIDGE_ALPHAS, _ridge_alpha

    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 32))
    assert _ridge_alpha(x, 3.4 + 0.01 * rng.standard_normal(600)) == max(RIDGE_ALPHAS)  # nothing to fit: most
    y = 3.4 + x @ rng.standard_normal(32) * 0.3  # exact linear labels: any shrinkage costs
    assert _ridge_alpha(x, y) < 1.0


def test_of_several_candidates_the_drawing_least_like_the_person_is_kept_for_the_person(tiny_run, tmp_path):
    from idmrag_plugin.generation.attributes import AttributeProbes

    root, *_ = tiny_run
    # 60 tiny steps leave the FiLM layers near their zero start: give them weights, so that
    # candidates draw different faces and the choice among them can be seen
    renderer = FaceRenderer.from_pretrained(root / "run" / "renderer")
    with torch.no_grad():
        torch.manual_seed(3)
        for module in renderer.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0, 0.5)
    renderer.save_pretrained(tmp_path / "renderer", dtype=torch.float32)
    sha = json.loads((tmp_path / "renderer" / "config.json").read_text())["sha256"]
    zeros = (np.zeros(512), 0.0)
    AttributeProbes(zeros, (np.zeros(512), 3.4), (np.zeros(16), 0.0), (np.zeros(16), 3.4), sha).save(
        tmp_path / "probes.safetensors")
    generator = RendererGenerator(tmp_path / "renderer", root / "codes", root / "sampler.safetensors",
                                  secret=b"s", attribute_probes_path=tmp_path / "probes.safetensors",
                                  student_path=root / "student.safetensors", candidates=4)
    face = np.random.default_rng(2).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    out = generator.generate(GenerationRequest(face, attempt=0, seed=7))
    code, attr = (a[0] for a in generator.encode(face[None]))
    codes = np.stack([generator.replacement_code(code, 0, variant) for variant in range(4)])
    assert len({c.tobytes() for c in codes}) == 4
    drawings = generator._render(codes, face, attr[None])
    likeness = generator._likeness(drawings, face, generator._attribute_keeping()[1])
    assert np.array_equal(out, generator._composite(drawings[int(np.argmin(likeness))], face))
    assert not np.array_equal(out, generator._composite(drawings[int(np.argmax(likeness))], face))
    # the person's next photo gets the kept pseudonym, not a choice of its own
    again = np.clip(face.astype(np.int16) + 3, 0, 255).astype(np.uint8)
    drawn_again = generator.generate(GenerationRequest(again, attempt=0, seed=8))
    ((person, by_attempt),) = generator._chosen.items()
    (kept,) = by_attempt.values()
    assert np.array_equal(kept, codes[int(np.argmin(likeness))])
    redrawn = generator._render(kept[None], again, generator.encode(again[None])[1])[0]
    assert np.array_equal(drawn_again, generator._composite(redrawn, again))
    # a registered pseudonym too near a photo's own code (the sampler's rule) is not reused for it
    own, own_attr = (a[0] for a in generator.encode(again[None]))
    generator._chosen[person][0] = own.copy()
    out_near = generator.generate(GenerationRequest(again, attempt=0, seed=8))
    assert not np.array_equal(out_near, generator._composite(generator._render(own[None], again, own_attr[None])[0], again))
    assert np.array_equal(generator._chosen[person][0], own)  # chosen anew for this photo only
    # a drawing that smudges the forehead is passed over, however unlike the person it is
    fresh = RendererGenerator(tmp_path / "renderer", root / "codes", root / "sampler.safetensors",
                              secret=b"s", attribute_probes_path=tmp_path / "probes.safetensors",
                              student_path=root / "student.safetensors", candidates=4)
    order = np.argsort(likeness)
    smudged_shown = generator._composite(drawings[order[0]], face)
    fresh.smudged = lambda shown, _face: 2.0 if np.array_equal(shown, smudged_shown) else 0.0
    fresh.unfitness = lambda drawn, _face, grow=None: np.zeros(len(drawn))  # (a tiny renderer draws speckled)
    passed_over = fresh.generate(GenerationRequest(face, attempt=0, seed=7))
    assert not np.array_equal(passed_over, smudged_shown)
    assert any(np.array_equal(passed_over, generator._composite(drawings[k], face)) for k in order[1:])
    with pytest.raises(ModelLoadError, match="candidates"):
        RendererGenerator(root / "run" / "renderer", root / "codes", root / "sampler.safetensors", candidates=0)


def test_dlib_reading_probes_read_the_original_s_descriptor_the_engine_brings(tiny_run, tmp_path):
    """Probes that read dlib's descriptor take the person's gender from the embedding the
    request carries (the verifier's, of the face in its photo); a request without one (the
    generator used on its own) gets dlib's descriptor of the crop computed by the generator."""
    from idmrag_plugin.engine.align import template
    from idmrag_plugin.generation.attributes import AttributeProbes

    root, *_ = tiny_run
    sha = json.loads((root / "run" / "renderer" / "config.json").read_text())["sha256"]
    weight = np.zeros(128)
    weight[0] = 1.0
    thirty = float(np.log1p(30.0))
    AttributeProbes((weight, 0.0), (np.zeros(128), thirty), (np.zeros(16), 0.0), (np.zeros(16), thirty), sha,
                    image_reader="dlib").save(tmp_path / "probes.safetensors")

    def build() -> RendererGenerator:
        return RendererGenerator(root / "run" / "renderer", root / "codes", root / "sampler.safetensors",
                                 secret=b"s", attribute_probes_path=tmp_path / "probes.safetensors",
                                 student_path=root / "student.safetensors")

    face = np.random.default_rng(2).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    for sign in (1.0, -1.0):
        generator = build()
        embedded: list[np.ndarray] = []
        own_embedding = generator._dlib_embedding
        generator._dlib_embedding = (  # type: ignore[method-assign]
            lambda crop, seen=embedded, embed=own_embedding: seen.append(crop) or embed(crop))
        embedding = np.zeros(128, np.float32)
        embedding[0] = sign
        generator.generate(GenerationRequest(face, attempt=0, seed=1, original_embeddings={"dlib": embedding}))
        (reading,) = generator._readings.values()
        assert reading.gender == (sign > 0)
        # the original is not embedded a second time; its drawings are (they are read back, misdrawn)
        assert embedded and not any(np.array_equal(crop, face) for crop in embedded)
    generator = build()
    generator.generate(GenerationRequest(face, attempt=0, seed=1))
    (reading,) = generator._readings.values()
    own = generator._reader.embed(generator._reader.crops(face, [template(128)]))[0]
    assert reading.gender == bool(own[0] > 0)
    with pytest.raises(ModelLoadError, match="known readers"):
        AttributeProbes((weight, 0.0), (weight, 0.0), (np.zeros(16), 0.0), (np.zeros(16), 0.0), sha, image_reader="vgg")


def test_the_age_network_reads_what_a_linear_probe_cannot_and_round_trips(tmp_path):
    """Age that depends on the embedding non-linearly (here on the square of a projection) is
    read by the network ensemble far better than by the ridge; saved and loaded, it reads the same."""
    from idmrag_plugin.generation.attributes import AttributeProbes
    from idmrag_plugin.training.fit_attribute_probes import _age_net, _ridge

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1500, 32))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = 2.5 + 6.0 * (unit @ np.full(32, 32**-0.5)) ** 2 + 0.02 * rng.standard_normal(len(x))
    train, test = slice(0, 1200), slice(1200, None)
    net = _age_net(x[train], y[train], "test", seed=0)
    weights, bias = _ridge(unit[train], y[train], "test")
    net_error = np.abs(net(x[test]) - y[test]).mean()
    ridge_error = np.abs(unit[test] @ weights + bias - y[test]).mean()
    assert net_error < 0.6 * ridge_error, (net_error, ridge_error)
    assert np.allclose(net(x[test] * 7.0), net(x[test]))  # reads the direction: embeddings are L2-normalised
    probes = AttributeProbes((np.zeros(32), 0.0), (weights, bias), (np.zeros(4), 0.0), (np.zeros(4), 3.0), "0" * 64,
                             image_reader="dlib", image_age_net=net)
    probes.save(tmp_path / "probes.safetensors")
    loaded = AttributeProbes.load(tmp_path / "probes.safetensors")
    assert loaded.image_age_net is not None
    np.testing.assert_allclose(loaded.image_age_net(x[test]), net(x[test]), atol=1e-4)
    read = [r.log_age for r in loaded.read_image(x[test])]
    np.testing.assert_allclose(read, net(x[test]), atol=0.0051)  # rounded to 2 decimals


def test_a_group_probe_round_trips_whatever_the_memory_order_of_its_weights(tmp_path):
    """sklearn's multinomial coefficients can come Fortran-ordered; safetensors writes an array's
    memory as it lies, so the probe must be saved C-ordered or it loads scrambled."""
    from dataclasses import replace

    from idmrag_plugin.generation.attributes import GROUP_LABELS, AttributeProbes

    rng = np.random.default_rng(5)
    weight = np.asfortranarray(rng.standard_normal((len(GROUP_LABELS), 128)))
    assert not weight.flags.c_contiguous
    probes = AttributeProbes((np.zeros(128), 0.0), (np.zeros(128), 3.0), (np.zeros(16), 0.0), (np.zeros(16), 3.0),
                             "0" * 64, image_reader="dlib", image_group=(weight, rng.standard_normal(len(GROUP_LABELS))))
    probes.save(tmp_path / "probes.safetensors")
    loaded = AttributeProbes.load(tmp_path / "probes.safetensors")
    faces = rng.standard_normal((50, 128))
    assert np.allclose(loaded.read_group(faces), probes.read_group(faces), atol=1e-5)
    assert loaded.group_fingerprint() == probes.group_fingerprint() != ""
    assert replace(loaded, image_group=None).group_fingerprint() == ""
    assert replace(loaded, image_group=None).read_image(faces[:1])[0].group is None


def test_utkface_labels_give_the_perceived_group(tmp_path):
    from idmrag_plugin.training.data import utkface_samples

    (tmp_path / "images").mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / "images" / name).write_bytes(b"")
    (tmp_path / "labels.csv").write_text('file,age,"gender(0=male,1=female)","race(0=White,1=Black,2=Asian,3=Indian,4=Other)"\n'
                                         "a.jpg,30,1,1\nb.jpg,40,0,3\nc.jpg,50,0,\n")
    samples = {s.path.name: s for s in utkface_samples(tmp_path)}
    assert (samples["a.jpg"].race, samples["b.jpg"].race, samples["c.jpg"].race) == (1, 3, -1)
    assert (samples["a.jpg"].age, samples["a.jpg"].gender) == (30, 1)


def test_face_lightness_reads_the_cheeks_and_nose_and_orders_complexions():
    """The tone probe's target: L* (OpenCV's 0-255) of the region below the eyes and above the
    mouth, whatever lies around it (hair, background); lighter faces read lighter."""
    from idmrag_plugin.engine.align import template
    from idmrag_plugin.generation.attributes import face_lightness

    crops = np.zeros((3, 128, 128, 3), np.uint8)
    points = template(128)
    for crop, value in zip(crops, (60, 140, 220), strict=True):
        crop[:] = 255 - value  # the surroundings, inverted: must not count
        # the inner face from the eyes to the mouth, a little wider than the eyes
        cv2.rectangle(crop, (int(points[0, 0]) - 4, int(points[0, 1])), (int(points[1, 0]) + 4, int(points[3, 1])),
                      (value, value, value), thickness=-1)
    expected = [float(cv2.cvtColor(np.full((1, 1, 3), v, np.uint8), cv2.COLOR_RGB2LAB)[0, 0, 0]) for v in (60, 140, 220)]
    assert face_lightness(crops).tolist() == expected


def test_face_codes_for_the_code_probes_are_drawn_group_balanced():
    """``fit-attribute-probes --face-codes``: training faces' own codes, each perceived group (the
    group probe's reading of their dlib descriptors) about as common as any other, so that the
    code probes learn what the renderer draws for codes the sampler rarely gives."""
    from idmrag_plugin.training.fit_attribute_probes import _face_codes

    class Encoder:
        def encode(self, faces):
            return faces.reshape(len(faces), -1)[:, :4].astype(np.float32), None

    n = 1000
    crops = np.repeat(np.arange(n)[:, None, None, None], 2, axis=1).repeat(2, axis=2).repeat(3, axis=3)
    crops = crops.astype(np.float64)
    most = np.where(np.arange(n) < 950, 0, 1)  # 950 faces of group 0, 50 of group 1
    embeddings = np.zeros((n, 128))
    embeddings[:, 0] = np.where(most == 1, 1.0, -1.0)
    weight = np.zeros((5, 128))
    weight[1, 0], weight[0, 0] = 8.0, -8.0
    rows = np.arange(n)
    codes = _face_codes(Encoder(), crops, rows, 400, (weight, np.zeros(5)), embeddings, np.random.default_rng(0))
    assert codes.shape == (400, 4) and codes.dtype == np.float32
    picked = codes[:, 0].astype(int)
    assert 0.4 < np.mean(picked >= 950) < 0.6  # half from the 5% of group 1
    plain = _face_codes(Encoder(), crops, rows, 400, None, None, np.random.default_rng(0))
    assert np.mean(plain[:, 0] >= 950) < 0.12


def test_the_generator_matches_a_soft_photo_at_its_first_attempts_only(tiny_run, astronaut):
    """An untrained renderer draws noise, far sharper than a face far out of focus: composited at
    the first attempts it has little more detail than the photo's face; at the late attempts (the wider
    ellipse) it is kept as drawn, and so it is with ``match_sharpness=False``."""
    from idmrag_plugin.engine.blend import face_mask
    from idmrag_plugin.generation.renderer_generator import WIDER_MASK_FROM_ATTEMPT
    from idmrag_plugin.generation.sharpness import ALLOWANCE, luma_detail

    root, *_ = tiny_run
    face = cv2.resize(astronaut[20:260, 120:360], (128, 128), interpolation=cv2.INTER_AREA)
    photo = cv2.GaussianBlur(face, (0, 0), 8.0)  # the tiny renderer draws at 32 px, softly: far out of focus
    region = face_mask(128) > 0.5
    paths = (root / "run" / "renderer", root / "codes", root / "sampler.safetensors")
    matched = RendererGenerator(*paths, secret=b"sharp")
    as_drawn = RendererGenerator(*paths, secret=b"sharp", match_sharpness=False)
    first = matched.generate(GenerationRequest(photo, attempt=0, seed=3))
    assert luma_detail(first, region) <= ALLOWANCE * luma_detail(photo, region) + 1e-6
    assert luma_detail(as_drawn.generate(GenerationRequest(photo, attempt=0, seed=3)), region) > \
        1.5 * luma_detail(photo, region)
    late = matched.generate(GenerationRequest(photo, attempt=WIDER_MASK_FROM_ATTEMPT, seed=3))
    assert luma_detail(late, region) > 1.5 * luma_detail(photo, region)


def test_the_screens_that_need_dlib_skip_a_drawing_the_others_already_refuse(tiny_run, monkeypatch):
    """A drawing the cheap screens (speckle, forehead, chin, eyes) already refuse is not read by
    dlib's descriptor or landmarks (glasses, gender and age, mouth); where every code is refused,
    the least unfit is still chosen with every screen read, for every drawing that the cheap
    screens alone have not already put further off than the best one read whole."""
    from idmrag_plugin.generation.renderer_generator import FURTHER_ALTERNATES, SPECKLE_ALTERNATES

    root, *_ = tiny_run
    face = np.random.default_rng(3).integers(0, 256, (128, 128, 3), dtype=np.uint8)

    def planted(speckled: dict[bytes, float], glasses: dict[bytes, float]) -> tuple[RendererGenerator, list[bytes]]:
        """A fresh generator (nobody met yet) whose drawings are speckled and show glasses as
        planted per code; the codes whose glasses were read, in order."""
        generator = RendererGenerator(root / "run" / "renderer", root / "codes", root / "sampler.safetensors",
                                      secret=b"s")
        _scored_drawings(generator, monkeypatch, speckled, "speckled")
        shows: dict[bytes, bytes] = {}  # composite -> the code it shows
        finish, composite = generator._finish, generator._composite
        last: list[bytes] = []

        def finishing(drawn, f, c, grow=None):
            last.append(c[0].tobytes())
            return finish(drawn, f, c, grow)

        def compositing(image, f, grow=None):
            out = composite(image, f, grow)
            shows[out.tobytes()] = last[-1]
            return out

        read: list[bytes] = []

        def glasses_off(shown, f, descriptor=None):
            read.append(shows[shown.tobytes()])
            return glasses.get(read[-1], 0.0)

        monkeypatch.setattr(generator, "_finish", finishing)
        monkeypatch.setattr(generator, "_composite", compositing)
        monkeypatch.setattr(generator, "glasses_off", glasses_off)
        return generator, read

    generator, _ = planted({}, {})
    code = generator.encode(face[None])[0][0]
    codes = generator.pseudonym_codes(code, 0, 1 + SPECKLE_ALTERNATES + FURTHER_ALTERNATES)
    person = generator._seed_code(code).tobytes()

    generator, read = planted({codes[0].tobytes(): 3.0}, {})
    generator.generate(GenerationRequest(face, attempt=0, seed=7))
    assert read == [codes[1].tobytes()]  # the speckled first code went unread, the next (fit) was read
    assert np.array_equal(generator._unspeckled[person][0], codes[1])

    # every code speckled, the second least so; glasses put it furthest off, so the third is
    # kept: read are the two whose speckle alone left them a chance, once each
    speckled = {c.tobytes(): 3.0 for c in codes}
    speckled[codes[1].tobytes()], speckled[codes[2].tobytes()] = 1.5, 2.0
    generator, read = planted(speckled, {codes[1].tobytes(): 5.0})
    generator.generate(GenerationRequest(face, attempt=0, seed=7))
    assert sorted(read) == sorted(c.tobytes() for c in codes[1:3])
    assert np.array_equal(generator._unspeckled[person][0], codes[2])
    # glasses put the third off too (4.0): every code at 3.0 may now be the least unfit, so
    # every one is read, and the first of them wins
    generator, read = planted(speckled, {codes[1].tobytes(): 5.0, codes[2].tobytes(): 4.0})
    generator.generate(GenerationRequest(face, attempt=0, seed=7))
    assert sorted(read) == sorted(c.tobytes() for c in codes)  # every one read, once
    assert np.array_equal(generator._unspeckled[person][0], codes[0])
