"""The face refiner (the renderer's 64 px drawing -> the crop's 128 px) on tiny randomly
initialised configs: it never sees the masked original, keeps the context exactly, starts as
a plain resize, trains and resumes, persists with a sha256, and serves the renderer
generators; and the packaged one."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from conftest import anonymize_with_packaged_generator
from safetensors.torch import save_file

from idmrag_plugin import GenerationRequest, ModelLoadError
from idmrag_plugin.errors import ConfigError
from idmrag_plugin.generation.encoder import CodesConfig, DisentangledFaceVAE
from idmrag_plugin.generation.identity_student import IdentityStudent
from idmrag_plugin.generation.latent_diffusion import codes_fingerprint
from idmrag_plugin.generation.refiner import FaceRefiner, RefinerConfig, upsample
from idmrag_plugin.generation.renderer import FaceRenderer, RendererConfig, inpaint_mask
from idmrag_plugin.generation.renderer_generator import RendererGenerator
from idmrag_plugin.generation.sampler import IdentitySampler


@pytest.fixture(autouse=True)
def _unfit_attempts_kept(unfit_attempts_kept):
    """Every least unfit drawing kept here (see conftest.unfit_attempts_kept)."""


def _tiny(size: int = 64, trained: bool = True) -> FaceRefiner:
    torch.manual_seed(0)
    refiner = FaceRefiner(RefinerConfig(image_size=size, input_size=size // 2, base_channels=4, mid_channels=8,
                                        deep_channels=8, blocks=1)).eval()
    if trained:  # the residual starts at zero: give the last layer weights so that the network matters
        with torch.no_grad():
            refiner.out.weight.normal_(0, 0.3)
            for module in refiner.modules():
                if hasattr(module, "noise_strength"):
                    module.noise_strength.fill_(0.5)
    return refiner


def _inputs(size: int, n: int = 2):
    g = torch.Generator().manual_seed(1)
    context = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    mask = torch.from_numpy(inpaint_mask(size))[None, None].expand(n, 1, size, size)
    drawing = torch.rand(n, 3, size // 2, size // 2, generator=g) * 2 - 1
    return context, mask, drawing


@pytest.mark.parametrize("size", [64, 128])
def test_shapes_dtypes_and_exact_context(size):
    refiner = _tiny(size)
    context, mask, drawing = _inputs(size)
    with torch.no_grad():
        out = refiner(context, mask, drawing, generator=torch.Generator().manual_seed(0))
    assert out.shape == context.shape and out.dtype == torch.float32
    outside = mask.expand_as(out) == 0
    assert torch.equal(out[outside], context[outside])  # the context is kept, exactly
    inside = ~outside
    assert not torch.allclose(out[inside], upsample(drawing, size)[inside], atol=0.02)  # detail was added


def test_an_untrained_refiner_is_a_plain_resize_of_the_drawing():
    refiner = _tiny(64, trained=False)
    context, mask, drawing = _inputs(64)
    with torch.no_grad():
        out = refiner(context, mask, drawing, generator=torch.Generator().manual_seed(0))
    expected = mask * upsample(drawing, 64) + (1 - mask) * context
    assert torch.allclose(out, expected, atol=1e-6)


def test_the_original_under_the_mask_never_reaches_the_output():
    refiner = _tiny(64)
    context, mask, drawing = _inputs(64)
    tampered = torch.where(mask.expand_as(context) > 0, torch.rand_like(context) * 2 - 1, context)
    with torch.no_grad():
        a = refiner(context, mask, drawing, generator=torch.Generator().manual_seed(3))
        b = refiner(tampered, mask, drawing, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_sides_that_are_not_multiples_of_four_are_refused():
    refiner = _tiny(64)
    context, mask, drawing = _inputs(66)
    with pytest.raises(ValueError, match="multiples of 4"):
        refiner(context, mask, drawing)


def test_save_and_load_round_trip_checks_the_sha256(tmp_path):
    refiner = _tiny(64)
    refiner.save_pretrained(tmp_path / "r", dtype=torch.float32)
    meta = json.loads((tmp_path / "r" / "config.json").read_text())
    assert meta["image_size"] == 64 and meta["input_size"] == 32 and len(meta["sha256"]) == 64
    loaded = FaceRefiner.from_pretrained(tmp_path / "r")
    for (name, a), (_, b) in zip(refiner.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    weights = tmp_path / "r" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256"):
        FaceRefiner.from_pretrained(tmp_path / "r")
    with pytest.raises(ModelLoadError, match="train-refiner"):
        FaceRefiner.from_pretrained(tmp_path / "nothing")


def _faces(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Learnable stand-ins for faces: colour gradients and a dark ellipse with a sharp edge
    (which the downsample and blur soften and the refiner must draw back)."""
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
    """A tiny codes model + student + 32 px renderer + 64 px dataset, two short train-refiner runs."""
    from idmrag_plugin.training.train_refiner import build_parser, train

    root = tmp_path_factory.mktemp("refiner")
    torch.manual_seed(0)
    DisentangledFaceVAE(CodesConfig(image_size=32, base_channels=8, id_dim=16, attr_channels=2)).save_pretrained(
        root / "codes")
    save_file(IdentityStudent(width=8).state_dict(), str(root / "student.safetensors"))
    FaceRenderer(RendererConfig(image_size=32, base_channels=8, max_channels=16, id_dim=16, attr_channels=2,
                                style_dim=16, codes_sha256=codes_fingerprint(root / "codes"))).save_pretrained(
        root / "renderer")
    rng = np.random.default_rng(0)
    n = 24
    np.savez(root / "data.npz", crops=_faces(n, 64, rng), identity=np.repeat(np.arange(n // 2), 2).astype(np.int32),
             split=np.array(["train"] * 20 + ["val"] * 4), emb_facenet=rng.standard_normal((n, 512)).astype(np.float32))
    IdentitySampler.fit(np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32),
                        np.repeat(np.arange(32), 2), components=2).save(root / "sampler.safetensors")
    argv = ["--data", str(root / "data.npz"), "--output", str(root / "run"), "--codes", str(root / "codes"),
            "--student", str(root / "student.safetensors"), "--renderer", str(root / "renderer"), "--size", "64",
            "--base-channels", "8", "--mid-channels", "8", "--deep-channels", "16", "--blocks", "1",
            "--disc-channels", "8", "--batch", "8", "--checkpoint-every", "40", "--r1-every", "4", "--lr", "3e-3",
            "--threads", "1", "--weight", "adv=0.1"]
    first = train(build_parser().parse_args(argv + ["--steps", "2"]))
    second = train(build_parser().parse_args(argv + ["--steps", "320"]))
    return root, argv, first, second


def test_training_resumes_and_reconstruction_falls(tiny_run):
    root, _argv, first, second = tiny_run
    assert first["step"] == 2 and second["step"] == 320  # the second run resumed the first
    assert {"adv", "rec", "spectrum", "fm", "consistency", "d", "r1"} <= set(first)
    assert second["rec"] < first["rec"]  # one batch each: noisy (0.41-0.85 of the first over four seeds)
    assert (root / "run" / "samples.png").stat().st_size > 0
    refiner = FaceRefiner.from_pretrained(root / "run" / "refiner")
    assert refiner.config.image_size == 64 and refiner.config.input_size == 32
    assert refiner.config.renderer_sha256 == json.loads((root / "renderer" / "config.json").read_text())["sha256"]
    # untrained it is a plain resize (last layer at zero); trained, it draws soft faces back
    # closer to the real ones (0.67-0.77 of the resize's error over four seeds at 320 steps)
    from idmrag_plugin.generation.refiner import downsample
    from idmrag_plugin.training.train_refiner import blur

    x = torch.from_numpy(np.load(root / "data.npz")["crops"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    mask = torch.from_numpy(inpaint_mask(64))[None, None].expand(len(x), 1, 64, 64)
    soft = blur(downsample(x, 32), 0.7)
    with torch.no_grad():
        refined = refiner(x, mask, soft, generator=torch.Generator().manual_seed(0))
    error, plain_error = ((refined - x).abs() * mask).sum(), ((upsample(soft, 64) - x).abs() * mask).sum()
    assert error < 0.9 * plain_error


def test_training_refuses_a_checkpoint_of_another_config_and_a_size_not_above_the_renderer_s(tiny_run):
    from idmrag_plugin.training.train_refiner import build_parser, train

    _root, argv, _, _ = tiny_run
    with pytest.raises(ConfigError, match="another config"):
        train(build_parser().parse_args(argv + ["--steps", "321", "--deep-channels", "32"]))
    with pytest.raises(ConfigError, match="multiple of 4 above"):
        train(build_parser().parse_args(argv + ["--steps", "321", "--size", "32"]))


def test_training_from_init_starts_at_the_given_refiner_and_refuses_another_config(tiny_run, tmp_path):
    from idmrag_plugin.training.train_refiner import build_parser, train

    root, argv, _, _ = tiny_run
    start = FaceRefiner.from_pretrained(root / "run" / "refiner")
    fresh = [*argv, "--output", str(tmp_path / "tuned"), "--init", str(root / "run" / "refiner")]
    train(build_parser().parse_args([*fresh, "--steps", "0"]))  # saved at once: the starting weights
    tuned = FaceRefiner.from_pretrained(tmp_path / "tuned" / "refiner")
    for name, value in start.state_dict().items():
        assert torch.equal(tuned.state_dict()[name], value), name
    with pytest.raises(ConfigError, match="another config"):
        train(build_parser().parse_args([*fresh, "--output", str(tmp_path / "other"), "--steps", "1",
                                         "--deep-channels", "32"]))


def test_generator_with_a_refiner_draws_at_its_resolution_and_keeps_the_context(tiny_run, tmp_path):
    root, *_ = tiny_run
    refiner = _tiny(128)
    refiner.save_pretrained(tmp_path / "refiner", dtype=torch.float32)
    args = (root / "renderer", root / "codes", root / "sampler.safetensors")
    plain = RendererGenerator(*args, secret=b"one session")
    refined = RendererGenerator(*args, secret=b"one session", refiner_dir=tmp_path / "refiner")
    face = cv2.GaussianBlur(np.random.default_rng(2).integers(0, 256, (128, 128, 3), dtype=np.uint8), (0, 0), 2)
    request = GenerationRequest(face, attempt=0, seed=7)
    code = refined.replacement_code(refined.encode(face[None])[0][0], 0)
    assert refined._render(code[None], face, refined.encode(face[None])[1]).shape == (1, 128, 128, 3)
    out, base = refined.generate(request), plain.generate(request)
    assert out.shape == face.shape and out.dtype == np.uint8
    inside = refined.mask(128) > 0.5
    assert np.array_equal(out[~inside], face[~inside])  # the context, exactly
    assert not np.array_equal(out[inside], base[inside])  # the refiner drew
    assert np.array_equal(out, refined.generate(request))  # its noise follows the pseudonym
    with pytest.raises(ModelLoadError, match="train-refiner"):
        RendererGenerator(*args, refiner_dir=tmp_path / "nothing").generate(request)
    # a renderer that draws at the refiner's resolution already (a 128 px renderer with the
    # packaged refiner) has nothing to refine: the drawing is used as drawn
    _tiny(32).save_pretrained(tmp_path / "other_refiner", dtype=torch.float32)
    other = RendererGenerator(*args, secret=b"one session", refiner_dir=tmp_path / "other_refiner")
    assert np.array_equal(other.generate(request), base)


def test_packaged_refiner_loads_with_its_sha256_and_stands_aside_for_the_128_px_renderer(make_engine, astronaut,
                                                                                         oracles):
    """The shipped refiner (trained behind session 9-27's 64 px renderer) loads with its sha256;
    the shipped renderer draws at the crop's 128 px, so a generator given the refiner uses its
    drawings as drawn (same pixels as without it), and through the engine a face is generated
    and verified or fails closed."""
    from idmrag_plugin.weights import (
        CODES_VAE_DIR,
        REFINER_DIR,
        RENDERER_DIR,
        SAMPLER_FILE,
        packaged,
    )

    refiner = FaceRefiner.from_pretrained(packaged(REFINER_DIR))  # checks the recorded sha256
    assert refiner.config.image_size == 128 and refiner.config.input_size == 64
    renderer = json.loads((packaged(RENDERER_DIR) / "config.json").read_text())
    assert renderer["image_size"] == refiner.config.image_size
    anonymize_with_packaged_generator(make_engine, astronaut, oracles, cache_size=0)

    (det,) = make_engine().detector.detect(astronaut)
    from idmrag_plugin.engine.align import align_face

    face = align_face(astronaut, det.landmarks, 128).crop
    args = (packaged(RENDERER_DIR), packaged(CODES_VAE_DIR), packaged(SAMPLER_FILE))
    plain = RendererGenerator(*args, secret=b"one session")
    refined = RendererGenerator(*args, secret=b"one session", refiner_dir=packaged(REFINER_DIR))
    request = GenerationRequest(face, attempt=0, seed=0)
    assert np.array_equal(refined.generate(request), plain.generate(request))
    assert refined.refiner_dir is None  # set aside once it was seen to draw at the renderer's size


@pytest.mark.parametrize("size", [64, 128])
def test_a_fresh_discriminator_s_logits_respond_to_the_image(astronaut, size):
    """With torch's default initialisation the 128 px discriminator's logits hardly depended on
    its input (squared input-gradient ~1e-5): the refiner's adversarial loss pushed nothing."""
    from idmrag_plugin.training.adversarial import PatchDiscriminator, r1_penalty

    step = astronaut.shape[0] // size
    x = torch.from_numpy(astronaut[::step, ::step][:size, :size].copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    for seed in range(3):
        torch.manual_seed(seed)
        assert r1_penalty(PatchDiscriminator(size, 16), x, torch.zeros(1, 1, size, size)).item() > 1.0
