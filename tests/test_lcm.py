"""Latent diffusion teacher + latent consistency model, on tiny randomly initialised configs
(as diffusers' own tests do): persistence, sampling, the LCM parametrisation, training with
resume, and the generator through the engine."""

from __future__ import annotations

import json

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
from idmrag_plugin.generation.encoder import CodesConfig, DisentangledFaceVAE
from idmrag_plugin.generation.identity_student import IdentityStudent
from idmrag_plugin.generation.latent_diffusion import (
    FaceLatentDiffusion,
    LatentDiffusionConfig,
    make_scheduler,
    sample_latents,
)
from idmrag_plugin.generation.lcm_generator import LatentDiffusionGenerator
from idmrag_plugin.generation.sampler import IdentitySampler
from idmrag_plugin.training.train_lcm import boundary_scalings

TINY = {"image_size": 32, "autoencoder_channels": (8, 16), "unet_channels": (8, 16), "cross_attention_dim": 16,
        "id_dim": 16, "attr_channels": 2, "attr_size": 8, "id_tokens": 2}


@pytest.fixture(scope="module")
def tiny_model() -> FaceLatentDiffusion:
    torch.manual_seed(0)
    return FaceLatentDiffusion(LatentDiffusionConfig(kind="lcm", **TINY)).eval()


def test_save_and_load_round_trip_checks_the_sha256(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["kind"] == "lcm" and len(meta["sha256"]) == 64
    loaded = FaceLatentDiffusion.from_pretrained(tmp_path / "m")
    for (name, a), (_, b) in zip(tiny_model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ModelLoadError, match="sha256"):
        FaceLatentDiffusion.from_pretrained(tmp_path / "m")
    with pytest.raises(ModelLoadError, match="train-lcm"):
        FaceLatentDiffusion.from_pretrained(tmp_path / "nothing")


def test_sampling_is_seeded_and_bounded(tiny_model):
    z_id, z_attr = torch.randn(2, 16), torch.randn(2, 2, 8, 8)
    outs = {}
    for steps in (1, 2, 4):
        a = sample_latents(tiny_model, z_id, z_attr, steps, torch.Generator().manual_seed(1))
        b = sample_latents(tiny_model, z_id, z_attr, steps, torch.Generator().manual_seed(1))
        assert a.shape == (2, 3, 32, 32) and torch.isfinite(a).all() and a.abs().max() <= 1
        assert torch.equal(a, b)
        outs[steps] = a
    other = sample_latents(tiny_model, z_id, z_attr, 4, torch.Generator().manual_seed(2))
    assert not torch.equal(outs[4], other)
    with pytest.raises(ConfigError):
        sample_latents(tiny_model, z_id, z_attr, 0)


def test_boundary_scalings_match_diffusers_lcm_scheduler():
    scheduler = make_scheduler(LatentDiffusionConfig(kind="lcm", **TINY))
    for t in (0, 19, 259, 999):
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(t)
        mine_skip, mine_out = boundary_scalings(torch.tensor([t]))
        assert float(mine_skip) == pytest.approx(c_skip) and float(mine_out) == pytest.approx(c_out)
    # at t = 0 the consistency function is the identity (boundary condition)
    skip0, out0 = boundary_scalings(torch.tensor([0]))
    assert float(skip0) == 1.0 and float(out0) == 0.0


@pytest.fixture(scope="module")
def tiny_training(tmp_path_factory):
    """A tiny codes model + student + dataset, and a short train-lcm run on them."""
    from idmrag_plugin.training.train_lcm import build_parser, train

    root = tmp_path_factory.mktemp("lcm")
    torch.manual_seed(0)
    DisentangledFaceVAE(CodesConfig(image_size=32, base_channels=8, id_dim=16, attr_channels=2)).save_pretrained(
        root / "codes")
    save_file(IdentityStudent(width=8).state_dict(), str(root / "student.safetensors"))
    rng = np.random.default_rng(0)
    n = 16
    np.savez(root / "data.npz", crops=(rng.random((n, 32, 32, 3)) * 255).astype(np.uint8),
             identity=np.repeat(np.arange(n // 2), 2).astype(np.int32), split=np.array(["train"] * n),
             emb_facenet=rng.standard_normal((n, 512)).astype(np.float32),
             emb_dlib=rng.standard_normal((n, 128)).astype(np.float32))
    argv = ["--data", str(root / "data.npz"), "--output", str(root / "run"), "--codes", str(root / "codes"),
            "--student", str(root / "student.safetensors"), "--autoencoder-channels", "8,16",
            "--unet-channels", "8,16", "--cross-attention-dim", "16", "--batch", "4",
            "--autoencoder-steps", "2", "--teacher-steps", "2", "--checkpoint-every", "1", "--dlib-weight", "0.1"]
    codes = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    IdentitySampler.fit(codes, np.repeat(np.arange(32), 2), components=2).save(root / "sampler.safetensors")
    first = train(build_parser().parse_args(argv + ["--distill-steps", "1"]))
    second = train(build_parser().parse_args(argv + ["--distill-steps", "3"]))
    return root, first, second


def test_training_runs_all_phases_and_resumes(tiny_training):
    root, first, second = tiny_training
    assert (first["autoencoder"], first["teacher"], first["distill"]) == (2, 2, 1)
    assert second["distill"] == 3 and second["teacher"] == 2  # resumed, nothing retrained
    assert {"teacher/diffusion", "teacher/hinge", "teacher/identity", "teacher/dlib_hinge"} <= set(first)
    teacher = FaceLatentDiffusion.from_pretrained(root / "run" / "teacher")
    lcm = FaceLatentDiffusion.from_pretrained(root / "run" / "lcm")
    assert teacher.config.kind == "teacher" and lcm.config.kind == "lcm"
    assert lcm.config.latent_scale == pytest.approx(teacher.config.latent_scale) and lcm.config.latent_scale > 0


def test_generator_renders_a_pseudonym_face_of_the_crop_shape(tiny_training):
    root, _, _ = tiny_training
    for folder, steps in (("lcm", 2), ("teacher", 3)):
        generator = LatentDiffusionGenerator(root / "run" / folder, root / "codes", root / "sampler.safetensors",
                                             steps=steps)
        face = (np.random.default_rng(2).random((128, 128, 3)) * 255).astype(np.uint8)
        out = generator.generate(GenerationRequest(face, attempt=0, seed=7))
        again = generator.generate(GenerationRequest(face, attempt=0, seed=7))
        assert out.shape == face.shape and out.dtype == np.uint8
        assert np.array_equal(out, again)  # same person, same seed: same pseudonym face
        # another photo of the same person (same codes, other engine seed) renders the same face
        assert np.array_equal(out, generator.generate(GenerationRequest(face, attempt=0, seed=12345)))
        # a retry draws another identity, and other noise
        assert not np.array_equal(out, generator.generate(GenerationRequest(face, attempt=1, seed=7)))
        assert generator.name == f"{folder if folder == 'lcm' else 'teacher'}@{steps}"


def test_generator_refuses_a_diffusion_model_trained_on_other_codes(tiny_training, tmp_path):
    root, _, _ = tiny_training
    assert FaceLatentDiffusion.from_pretrained(root / "run" / "lcm").config.extra["codes_sha256"]
    torch.manual_seed(5)
    DisentangledFaceVAE(CodesConfig(image_size=32, base_channels=8, id_dim=16, attr_channels=2)).save_pretrained(
        tmp_path / "other_codes")
    generator = LatentDiffusionGenerator(root / "run" / "lcm", tmp_path / "other_codes", root / "sampler.safetensors")
    face = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ModelLoadError, match="retrain"):
        generator.generate(GenerationRequest(face, attempt=0, seed=1))


def test_engine_without_diffusion_weights_says_how_to_get_them():
    with pytest.raises(ModelLoadError, match="idmrag train-lcm"):
        FaceAnonymizer(AnonymizerConfig(generator="lcm"))
    with pytest.raises(ConfigError, match="generator_steps"):
        AnonymizerConfig(generator="vae-decode", generator_steps=4)
    with pytest.raises(ConfigError):
        AnonymizerConfig(generator="lcm", generator_steps=0)
