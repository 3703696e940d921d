"""Identity codes: model persistence, the sampler's guarantees, the VAE-decode generator,
and the training loop's checkpoint/resume, on tiny randomly initialised configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import anonymize_with_packaged_generator

from idmrag_plugin import GenerationRequest, ModelLoadError
from idmrag_plugin.generation.encoder import CodesConfig, DisentangledFaceVAE
from idmrag_plugin.generation.sampler import IdentitySampler, pseudonym_key
from idmrag_plugin.generation.vae_generator import VAEDecodeGenerator
from idmrag_plugin.training.losses import CLUBEstimator, gaussian_kl, supervised_contrastive

TINY = CodesConfig(image_size=32, base_channels=8, id_dim=16, attr_channels=2, attr_size=8)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("vae")
    DisentangledFaceVAE(TINY).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def clustered_codes():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((60, TINY.id_dim)) * 2
    labels = np.repeat(np.arange(60), 5)
    codes = centers[labels] + 0.3 * rng.standard_normal((len(labels), TINY.id_dim))
    gender = (centers[labels][:, 0] > 0).astype(np.int64)
    return codes, labels, gender


@pytest.fixture(scope="module")
def sampler_path(tmp_path_factory, clustered_codes):
    codes, labels, gender = clustered_codes
    path = tmp_path_factory.mktemp("sampler") / "sampler.safetensors"
    IdentitySampler.fit(codes, labels, components=4, gender=gender).save(path)
    return path


def test_save_and_load_round_trip(tiny_model_dir):
    model = DisentangledFaceVAE.from_pretrained(tiny_model_dir)
    again = DisentangledFaceVAE.from_pretrained(tiny_model_dir)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        np.testing.assert_allclose(model(x)["recon"].numpy(), again(x)["recon"].numpy(), atol=1e-6)
        assert model(x)["z_attr"].shape == (2, 2, 8, 8) and model(x)["z_id"].shape == (2, 16)


def test_tampered_weights_are_refused(tiny_model_dir, tmp_path):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    data = bytearray((tmp_path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256"):
        DisentangledFaceVAE.from_pretrained(tmp_path)


def test_sampler_accepts_only_distinct_realistic_unreal_codes(sampler_path, clustered_codes):
    codes, _, _ = clustered_codes
    sampler = IdentitySampler.load(sampler_path)
    accepted = 0
    for i in range(0, 300, 15):
        z, info = sampler.sample(codes[i], key=i.to_bytes(2, "little"))
        if info.accepted:
            accepted += 1
            unit = z / np.linalg.norm(z)
            assert float(unit @ (codes[i] / np.linalg.norm(codes[i]))) < sampler.distinct_cos
            assert sampler.log_density(z)[0] >= sampler.density_floor
            assert np.max(sampler.identity_means @ unit) < sampler.distinct_cos
            assert sampler._attributes(z)[0] == sampler._attributes(codes[i])[0]  # gender kept
    assert accepted >= 15


def test_sampler_leaves_attributes_to_a_generator_that_judges_them_itself(sampler_path, clustered_codes):
    codes, _, _ = clustered_codes
    sampler = IdentitySampler.load(sampler_path)
    kept = []
    for i in range(0, 300, 15):
        z, info = sampler.sample(codes[i], key=i.to_bytes(2, "little"), keep_attributes=False)
        assert info.accepted  # distinct, realistic and nobody real, without the probes
        unit = z / np.linalg.norm(z)
        assert float(unit @ (codes[i] / np.linalg.norm(codes[i]))) < sampler.distinct_cos
        assert np.max(sampler.identity_means @ unit) < sampler.distinct_cos
        kept.append(sampler._attributes(z)[0] == sampler._attributes(codes[i])[0])
    assert not all(kept)  # the probe's gender is not forced any more


def test_sampler_keeps_the_person_s_attributes_not_this_photo_s(sampler_path, clustered_codes):
    """Two photos of one person whose codes the probe reads differently aim at the person's
    (registered) gender: both photos then draw from the same candidates."""
    codes, _, _ = clustered_codes
    sampler = IdentitySampler.load(sampler_path)
    genders = np.array([sampler._attributes(c)[0] for c in codes])
    person = codes[int(np.flatnonzero(genders == 1)[0])]
    photos = codes[np.flatnonzero(genders == 0)[:10]]
    kept = 0
    for i, photo in enumerate(photos):
        z, info = sampler.sample(photo, key=i.to_bytes(2, "little"), person=person)
        if info.accepted:
            kept += 1
            assert sampler._attributes(z)[0] == 1  # the person's, not this photo's (0)
    assert kept >= 5


def test_same_key_same_pseudonym_other_key_other(sampler_path, clustered_codes):
    codes, _, _ = clustered_codes
    sampler = IdentitySampler.load(sampler_path)
    a, _ = sampler.sample(codes[0], key=pseudonym_key(b"secret", codes[0], 0))
    b, _ = sampler.sample(codes[0], key=pseudonym_key(b"secret", codes[0], 0))
    c, _ = sampler.sample(codes[0], key=pseudonym_key(b"other", codes[0], 0))
    d, _ = sampler.sample(codes[0], key=pseudonym_key(b"secret", codes[0], 1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, d)


def test_vae_generator_shapes_and_consistent_pseudonyms(tiny_model_dir, sampler_path, clustered_codes, astronaut):
    generator = VAEDecodeGenerator(tiny_model_dir, sampler_path, secret=b"k")
    face = np.ascontiguousarray(astronaut[60:188, 180:308])
    out = generator.generate(GenerationRequest(face, attempt=0, seed=0))
    assert out.shape == face.shape and out.dtype == np.uint8
    again = generator.generate(GenerationRequest(face, attempt=0, seed=0))
    np.testing.assert_array_equal(out, again)  # same person, same pseudonym
    retry = generator.generate(GenerationRequest(face, attempt=1, seed=1))
    assert not np.array_equal(out, retry)  # a retry draws another identity


def test_registry_finds_the_person_by_dlib_s_descriptor_where_the_request_brings_it(
        tiny_model_dir, sampler_path, clustered_codes):
    from idmrag_plugin.generation.vae_generator import registry_threshold

    codes, _, _ = clustered_codes
    generator = VAEDecodeGenerator(tiny_model_dir, sampler_path, secret=b"k")
    generator._load()
    same_cos = registry_threshold(1)
    assert registry_threshold(3) == same_cos  # a registry of a few people: far1e-3
    rng = np.random.default_rng(0)

    def unit(v):
        return v / np.linalg.norm(v)

    def near(v, cos):  # a unit vector at cosine ``cos`` from unit ``v``
        other = unit(rng.standard_normal(v.shape) - v * (v @ rng.standard_normal(v.shape)))
        other = unit(other - v * (other @ v))
        return cos * v + np.sqrt(1 - cos**2) * other

    person = unit(rng.standard_normal(128))
    far_codes = [c for c in codes[1:] if unit(c) @ unit(codes[0]) < generator._sampler.distinct_cos]
    # the codes say two people, dlib says one: one pseudonym (the first face's)
    first = generator._seed_code(codes[0], {"dlib": person})
    assert np.array_equal(first, codes[0])
    assert np.array_equal(generator._seed_code(far_codes[0], {"dlib": near(person, same_cos + 0.02)}), codes[0])
    # the face resolved once answers the same when the later drawing steps ask without embeddings
    assert np.array_equal(generator._seed_code(far_codes[0]), codes[0])
    # near codes, but dlib says another person: a pseudonym of its own
    twin = codes[0] + 1e-3
    assert np.array_equal(generator._seed_code(twin, {"dlib": near(person, same_cos - 0.1)}), twin)
    # of two registered people who both match, the nearer in dlib's eyes (not the first)
    side = unit(near(person, 0.0))
    angle = np.arccos(same_cos)

    def at(theta):
        return np.cos(theta) * person + np.sin(theta) * side

    assert np.array_equal(generator._seed_code(far_codes[1], {"dlib": at(1.2 * angle)}), far_codes[1])
    assert np.array_equal(generator._seed_code(far_codes[2], {"dlib": at(0.8 * angle)}), far_codes[1])
    # a request without embeddings falls back to the identity codes' rule
    assert np.array_equal(generator._seed_code(codes[0] * 1.01), codes[0])


def test_registry_threshold_tightens_as_the_registry_grows():
    """A stranger must not join someone else's pseudonym because many people are registered:
    past 50 people the same-person level is the one at which all registered people together
    match a stranger ``REGISTRY_FALSE_MATCHES`` times on average, within the calibrated levels."""
    from idmrag_plugin.calibration import load_calibration, thresholds_for
    from idmrag_plugin.generation.vae_generator import (
        REGISTRY_FALSE_MATCHES,
        REGISTRY_LOOSEST_FAR,
        registry_threshold,
    )

    loosest = thresholds_for("far1e-3", ["dlib"])["dlib"]
    sizes = [1, 2, 10, 50, 100, 1000, 10_000, 1_000_000]
    thresholds = [registry_threshold(n) for n in sizes]
    assert thresholds == sorted(thresholds)
    assert thresholds[:4] == [pytest.approx(loosest)] * 4  # up to 50 people: far1e-3
    assert round(REGISTRY_FALSE_MATCHES / REGISTRY_LOOSEST_FAR) == 50
    calibrated = load_calibration()["oracles"]["dlib"]["thresholds"]
    assert {"far1e-4", "far1e-5"} <= set(calibrated)  # the shipped calibration charts the tail
    assert registry_threshold(500) == pytest.approx(calibrated["far1e-4"])
    assert registry_threshold(5000) == pytest.approx(calibrated["far1e-5"])
    assert loosest < registry_threshold(100) < calibrated["far1e-4"]
    assert registry_threshold(10**7) == pytest.approx(calibrated["far1e-5"])  # past the tail: its strictest level


def test_a_stranger_as_similar_as_a_lookalike_joins_a_small_registry_only(tiny_model_dir, sampler_path):
    from idmrag_plugin.generation.vae_generator import registry_threshold

    between = (registry_threshold(10) + registry_threshold(1000)) / 2  # far1e-3 and about far5e-5
    rng = np.random.default_rng(5)

    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    def seed_after(registered: int) -> bool:
        """Whether a face at ``between`` from the first registered person's descriptor joins them
        once ``registered`` people (random descriptors: no other match) are registered."""
        generator = VAEDecodeGenerator(tiny_model_dir, sampler_path, secret=b"k")
        generator._load()
        dim = generator._model.config.id_dim
        codes = rng.standard_normal((registered + 1, dim))
        descriptors = unit(rng.standard_normal((registered, 128)))
        for code, descriptor in zip(codes[:-1], descriptors, strict=True):
            generator._seed_code(code, {"dlib": descriptor})
        assert len(generator._registry) == registered
        side = unit(rng.standard_normal(128) - descriptors[0] * (descriptors[0] @ rng.standard_normal(128)))
        side = unit(side - descriptors[0] * (side @ descriptors[0]))
        lookalike = between * descriptors[0] + np.sqrt(1 - between**2) * side
        return np.array_equal(generator._seed_code(codes[-1], {"dlib": lookalike}), codes[0])

    assert seed_after(10)
    assert not seed_after(1000)


def test_person_registry_grows_and_mixes_faces_with_and_without_descriptors():
    from idmrag_plugin.generation.vae_generator import PersonRegistry

    rng = np.random.default_rng(2)

    def unit(v):
        return v / np.linalg.norm(v)

    registry = PersonRegistry()
    assert registry.nearest(unit(rng.standard_normal(16)), None, 0.9, 0.5) is None
    codes = [unit(rng.standard_normal(16)) for _ in range(150)]
    descriptors = [unit(rng.standard_normal(128)) for _ in range(150)]
    registry.add(codes[0], None, codes[0] * 2)  # the first person came without a descriptor
    assert np.array_equal(registry.nearest(codes[0], descriptors[0], 0.9, 0.5), codes[0] * 2)  # by code
    for i in range(1, 150):  # past the first capacity (64) and its doubling
        registry.add(codes[i], descriptors[i], codes[i] * 2)
    assert len(registry) == 150
    for i in (1, 70, 149):
        assert np.array_equal(registry.nearest(unit(rng.standard_normal(16)), descriptors[i], 0.9, 0.5), codes[i] * 2)
        assert np.array_equal(registry.nearest(codes[i], None, 0.9, 0.5), codes[i] * 2)
    assert registry.nearest(unit(rng.standard_normal(16)), unit(rng.standard_normal(128)), 0.9, 0.9) is None


def test_person_registry_forgets_the_person_least_recently_met_when_full():
    from idmrag_plugin.generation.vae_generator import PersonRegistry

    rng = np.random.default_rng(3)
    codes = [v / np.linalg.norm(v) for v in rng.standard_normal((5, 16))]
    registry = PersonRegistry(capacity=3)
    for i in range(3):
        registry.add(codes[i], None, codes[i] * 2)
    assert np.array_equal(registry.nearest(codes[0], None, 0.9, 0.9), codes[0] * 2)  # met again: kept
    registry.add(codes[3], None, codes[3] * 2)  # full: person 1, least recently met, is forgotten
    assert len(registry) == 3
    assert registry.nearest(codes[1], None, 0.9, 0.9) is None
    for i in (0, 2, 3):
        assert np.array_equal(registry.nearest(codes[i], None, 0.9, 0.9), codes[i] * 2)
    descriptor = rng.standard_normal(128)
    registry.add(codes[4], descriptor / np.linalg.norm(descriptor), codes[4] * 2)  # takes person 0's place
    assert registry.nearest(codes[0], None, 0.9, 0.9) is None
    assert np.array_equal(registry.nearest(codes[4], descriptor / np.linalg.norm(descriptor), 0.9, 0.9), codes[4] * 2)
    with pytest.raises(ValueError, match="capacity"):
        PersonRegistry(capacity=0)


def test_loss_terms():
    mu, logvar = torch.zeros(4, 8), torch.zeros(4, 8)
    assert float(gaussian_kl(mu, logvar)) == 0.0 and float(gaussian_kl(mu + 1, logvar)) == pytest.approx(4.0)
    codes = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    good = supervised_contrastive(codes, torch.tensor([0, 0, 1, 1]))
    bad = supervised_contrastive(codes, torch.tensor([0, 1, 0, 1]))
    assert float(good) < float(bad)
    club = CLUBEstimator(attr_dim=4, id_dim=2)
    a = torch.randn(64, 4)
    dependent, independent = a[:, :2].clone(), torch.randn(64, 2)
    opt = torch.optim.Adam(club.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        (club.learning_loss(a, dependent) + club.learning_loss(a, independent)).backward()
        opt.step()
    with torch.no_grad():
        assert float(club(a, dependent)) > float(club(a, independent))


def test_training_checkpoints_and_resumes(tmp_path):
    from idmrag_plugin.training.train_codes import build_parser, train

    rng = np.random.default_rng(0)
    n = 24
    np.savez(tmp_path / "data.npz", crops=(rng.random((n, 32, 32, 3)) * 255).astype(np.uint8),
             identity=np.repeat(np.arange(n // 2), 2).astype(np.int32), split=np.array(["train"] * n),
             emb_facenet=rng.standard_normal((n, 512)).astype(np.float32))
    argv = ["--data", str(tmp_path / "data.npz"), "--output", str(tmp_path / "run"), "--size", "32",
            "--base-channels", "8", "--id-dim", "16", "--attr-channels", "2", "--student-width", "8",
            "--batch", "8", "--student-steps", "2", "--checkpoint-every", "2"]
    first = train(build_parser().parse_args(argv + ["--steps", "3"]))
    assert first["vae_step"] == 3 and first["student_step"] == 2
    second = train(build_parser().parse_args(argv + ["--steps", "5"]))
    assert second["vae_step"] == 5  # resumed at 3, not restarted
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["vae_step"] == 5
    model = DisentangledFaceVAE.from_pretrained(tmp_path / "run" / "codes_vae")
    assert model.config.image_size == 32

    # fine-tuning starts from the trained model (student phase skipped) with the penalties on
    tuned = train(build_parser().parse_args(
        argv[:3] + [str(tmp_path / "tuned")] + argv[4:]
        + ["--steps", "2", "--init", str(tmp_path / "run"), "--weight", "attr_adv=1", "--weight", "club=0.01",
           "--weight", "attr_pair=1"]
    ))
    assert tuned["vae_step"] == 2 and tuned["student_step"] == 2 and "attr_adv" in tuned and "attr_pair" in tuned


def test_same_identity_similarity_penalises_only_codes_that_carry_identity():
    from idmrag_plugin.training.losses import same_identity_similarity

    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, -1, -1])
    person = torch.randn(3, 16)
    leaky = torch.cat([person[labels.clamp(min=0)] + 0.1 * torch.randn(8, 16)])
    leaky[6:] = torch.randn(2, 16)  # unlabelled rows are strangers
    assert float(same_identity_similarity(leaky, labels)) > 0.5
    clean = torch.randn(8, 16)
    clean[1], clean[3], clean[5] = -clean[0], -clean[2], -clean[4]  # less alike than strangers: clamped to 0
    assert float(same_identity_similarity(clean, labels)) == 0.0
    assert float(same_identity_similarity(clean, torch.full((8,), -1))) == 0.0  # no known pairs
    leaky.requires_grad_(True)
    same_identity_similarity(leaky, labels).backward()
    assert leaky.grad is not None and leaky.grad.abs().sum() > 0


def test_quick_eval_scores_codes_and_trained_models(tmp_path, capsys):
    from idmrag_plugin.errors import ConfigError
    from idmrag_plugin.training.quick_eval import main, verification_auc, verification_pairs
    from idmrag_plugin.training.train_codes import build_parser, train

    labels = np.repeat(np.arange(30), 3)
    genuine, impostor = verification_pairs(labels, np.random.default_rng(0))
    assert len(genuine) == 90 and len(impostor) == 270
    assert all(labels[a] == labels[b] for a, b in genuine) and all(labels[a] != labels[b] for a, b in impostor)
    identity = torch.nn.functional.one_hot(torch.as_tensor(labels)).float() + 0.01 * torch.randn(90, 30)
    assert verification_auc(identity, genuine, impostor) > 0.99
    assert abs(verification_auc(torch.randn(90, 30), genuine, impostor) - 0.5) < 0.1
    with pytest.raises(ConfigError):
        verification_pairs(np.zeros(5, int), np.random.default_rng(0))

    rng = np.random.default_rng(0)
    n = 24
    split = np.array(["train"] * 16 + ["val"] * 8)
    np.savez(tmp_path / "data.npz", crops=(rng.random((n, 32, 32, 3)) * 255).astype(np.uint8),
             identity=np.repeat(np.arange(n // 2), 2).astype(np.int32), split=split,
             emb_facenet=rng.standard_normal((n, 512)).astype(np.float32))
    train(build_parser().parse_args([
        "--data", str(tmp_path / "data.npz"), "--output", str(tmp_path / "run"), "--size", "32", "--base-channels", "8",
        "--id-dim", "16", "--attr-channels", "2", "--student-width", "8", "--batch", "8", "--student-steps", "1",
        "--steps", "1"]))
    main(["--data", str(tmp_path / "data.npz"), str(tmp_path / "run")])
    (scores,) = json.loads(capsys.readouterr().out).values()
    assert set(scores) == {"auc_z_id", "auc_z_attr", "psnr", "swap_closer_to_a_student", "swaps"}
    assert 0.0 <= scores["auc_z_attr"] <= 1.0 and 0.0 <= scores["swap_closer_to_a_student"] <= 1.0
    assert scores["swaps"] > 0 and scores["psnr"] > 0


def test_dlib_student_terms_train_resume_and_need_dlib_embeddings(tmp_path):
    from idmrag_plugin.errors import ConfigError
    from idmrag_plugin.generation.identity_student import IdentityStudent
    from idmrag_plugin.training.train_codes import build_parser, train

    rng = np.random.default_rng(0)
    n = 16
    arrays = {"crops": (rng.random((n, 32, 32, 3)) * 255).astype(np.uint8),
                  "identity": np.repeat(np.arange(n // 2), 2).astype(np.int32), "split": np.array(["train"] * n),
                  "emb_facenet": rng.standard_normal((n, 512)).astype(np.float32)}
    np.savez(tmp_path / "facenet_only.npz", **arrays)
    np.savez(tmp_path / "both.npz", **arrays, emb_dlib=rng.standard_normal((n, 128)).astype(np.float32))
    argv = ["--size", "32", "--base-channels", "8", "--id-dim", "16", "--attr-channels", "2", "--student-width", "8",
            "--batch", "8", "--student-steps", "2", "--checkpoint-every", "2", "--weight", "swap_id_dlib=1"]
    with pytest.raises(ConfigError, match="emb_dlib"):
        train(build_parser().parse_args(
            argv + ["--data", str(tmp_path / "facenet_only.npz"), "--output", str(tmp_path / "x"), "--steps", "1"]))
    run = ["--data", str(tmp_path / "both.npz"), "--output", str(tmp_path / "run")]
    first = train(build_parser().parse_args(argv + run + ["--steps", "2"]))
    assert first["student_dlib_step"] == 2 and "swap_id_dlib" in first and "id_dec_dlib" in first
    second = train(build_parser().parse_args(argv + run + ["--steps", "3"]))
    assert second["vae_step"] == 3 and second["student_dlib_step"] == 2  # resumed, students not retrained
    dlib_student = IdentityStudent.load(tmp_path / "run" / "identity_student_dlib.safetensors")
    assert dlib_student(torch.zeros(1, 3, 32, 32)).shape == (1, 128)
    # fine-tuning from that folder brings the trained dlib student along
    tuned = train(build_parser().parse_args(argv + ["--data", str(tmp_path / "both.npz"), "--output",
                                                     str(tmp_path / "tuned"), "--steps", "1", "--init",
                                                     str(tmp_path / "run")]))
    assert tuned["student_dlib_step"] == 2 and tuned["vae_step"] == 1


def test_dlib_targets_are_centred_so_random_pairs_are_not_all_alike():
    from idmrag_plugin.training.train_codes import centred

    rng = np.random.default_rng(1)
    common = rng.standard_normal(128)
    raw = torch.from_numpy(common + 0.3 * rng.standard_normal((400, 128))).float()  # dlib-like: one shared direction
    raw_cos = torch.nn.functional.normalize(raw, dim=1)
    out = centred(raw)
    assert torch.allclose(out.norm(dim=1), torch.ones(400), atol=1e-5)
    pairs = torch.arange(0, 400, 2), torch.arange(1, 400, 2)
    before = (raw_cos[pairs[0]] * raw_cos[pairs[1]]).sum(1)
    after = (out[pairs[0]] * out[pairs[1]]).sum(1)
    assert before.mean() > 0.8 and abs(float(after.mean())) < 0.1 and after.std() > 3 * before.std()


def test_add_embeddings_and_pack_keep_every_oracle(tmp_path, camera_face, oracles):
    from idmrag_plugin.training.data import add_embeddings, pack_dataset, unpack_crops

    dlib = next(o for o in oracles if o.name == "dlib")
    crops = np.stack([camera_face, camera_face[:, ::-1].copy(), camera_face])
    np.savez(tmp_path / "data.npz", crops=crops, identity=np.array([0, 0, 1], np.int32),
             split=np.array(["train", "train", "val"]), emb_facenet=np.ones((3, 512), np.float32))
    assert add_embeddings(tmp_path / "data.npz", tmp_path / "more.npz", dlib, progress=False) == 3
    more = np.load(tmp_path / "more.npz")
    emb = more["emb_dlib"]
    assert emb.shape == (3, 128) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    assert np.allclose(emb[0], emb[2], atol=1e-5) and float(emb[0] @ emb[1]) > 0.9  # same face; mirrored
    assert np.array_equal(more["crops"], crops) and np.array_equal(more["emb_facenet"], np.ones((3, 512)))
    pack_dataset(tmp_path / "more.npz", tmp_path / "packed.npz", size=32)
    packed = np.load(tmp_path / "packed.npz")
    assert packed["emb_dlib"].shape == (2, 128) and packed["emb_facenet"].shape == (2, 512)
    assert unpack_crops(packed).shape == (2, 32, 32, 3)


def test_training_refuses_unknown_loss_weights_and_mismatched_init(tmp_path, capsys):
    from idmrag_plugin.training.train_codes import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--data", "x.npz", "--weight", "perceptual=1"])
    assert "unknown loss 'perceptual'" in capsys.readouterr().err


def test_attribute_adversary_measures_identity_leakage():
    from idmrag_plugin.training.losses import AttributeIdentityAdversary

    torch.manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(128, 16), dim=1)
    leaky = torch.cat([embeddings, torch.randn(128, 4)], dim=1)  # z_attr that contains the identity
    clean = torch.randn(128, 20)
    scores = {}
    for name, codes in (("leaky", leaky), ("clean", clean)):
        adversary = AttributeIdentityAdversary(attr_dim=20, embedding_dim=16, hidden=64)
        opt = torch.optim.Adam(adversary.parameters(), lr=3e-3)
        for _ in range(300):
            opt.zero_grad()
            adversary.learning_loss(codes[:96], embeddings[:96]).backward()
            opt.step()
        with torch.no_grad():
            scores[name] = float(adversary(codes[96:], embeddings[96:]))  # held-out rows
    assert scores["leaky"] > 0.5 > scores["clean"]


def test_packaged_vae_decode_engine_replaces_and_verifies(make_engine, astronaut, oracles):
    """The shipped codes model, through the whole engine: a generated face passes every oracle
    or the face fails closed; either way the output is not the original person."""
    anonymize_with_packaged_generator(make_engine, astronaut, oracles, generator="vae-decode")


def test_sampler_accepts_float32_mixture_weights_that_do_not_sum_exactly_to_one(tmp_path):
    rng = np.random.default_rng(3)
    weights = np.full(7, 1 / 7, dtype=np.float32)  # sums to 1 only within float32 rounding
    sampler = IdentitySampler(weights, rng.standard_normal((7, 8)), np.ones((7, 8)), rng.standard_normal((5, 8)),
                              distinct_cos=0.3, density_floor=-1e9)
    z, info = sampler.sample(rng.standard_normal(8), b"key")
    assert z.shape == (8,) and info.tries >= 1


def test_blend_codes_interpolates_weights_and_refuses_bad_input(tmp_path, tiny_model_dir):
    from idmrag_plugin.cli import main as cli_main
    from idmrag_plugin.errors import ConfigError
    from idmrag_plugin.training.blend_codes import blend_codes

    torch.manual_seed(1)
    other = tmp_path / "other"
    DisentangledFaceVAE(TINY).save_pretrained(other)
    start = DisentangledFaceVAE.from_pretrained(tiny_model_dir).state_dict()
    end = DisentangledFaceVAE.from_pretrained(other).state_dict()
    name = next(k for k, v in start.items() if v.is_floating_point() and not torch.equal(v, end[k]))
    for alpha in (0.0, 0.25, 1.0):
        blended = blend_codes(tiny_model_dir, other, alpha, tmp_path / f"b{alpha}").state_dict()
        expected = (start[name] + alpha * (end[name] - start[name])).half().float()
        assert torch.allclose(blended[name], expected, atol=1e-3)
    reloaded = DisentangledFaceVAE.from_pretrained(tmp_path / "b0.25").state_dict()  # sha256 checked on load
    quarter = (start[name] + 0.25 * (end[name] - start[name])).half().float()
    assert torch.allclose(reloaded[name], quarter, atol=1e-3) and not torch.allclose(reloaded[name], start[name])
    with pytest.raises(ConfigError, match="alpha"):
        blend_codes(tiny_model_dir, other, 1.5, tmp_path / "bad")
    wider = tmp_path / "wider"
    DisentangledFaceVAE(CodesConfig(image_size=32, base_channels=8, id_dim=8, attr_channels=2, attr_size=8)).save_pretrained(wider)
    with pytest.raises(ConfigError, match="different configs"):
        blend_codes(tiny_model_dir, wider, 0.5, tmp_path / "bad")
    assert cli_main(["blend-codes", str(tiny_model_dir), str(wider), "--alpha", "0.5", "--output", str(tmp_path / "c")]) == 2
    assert not (tmp_path / "bad").exists() and not (tmp_path / "c").exists()
