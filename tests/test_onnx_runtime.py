"""The oracles on ONNX Runtime: the same embeddings and verdicts as torch, an export that is
checked at every load (a damaged or stale one is redone), and clear errors where it cannot run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from idmrag_plugin import AnonymizerConfig, ConfigError, FaceAnonymizer, ModelLoadError
from idmrag_plugin.engine import onnx_runtime
from idmrag_plugin.engine.onnx_runtime import onnx_network, wants_onnxruntime
from idmrag_plugin.engine.oracles import build_oracle


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


@pytest.mark.parametrize("name", ["dlib", "facenet"])
def test_oracle_embeddings_on_onnxruntime_equal_torch_s(name, engine, astronaut, camera):
    reference = build_oracle(name, runtime="torch")
    fast = build_oracle(name, runtime="onnxruntime")
    faces = [(photo, det.landmarks) for photo in (astronaut, camera) for det in engine.detector.detect(photo)]
    crops = np.concatenate([reference.crops(photo, [lm]) for photo, lm in faces])
    assert len(crops) == 2
    expected, got = reference.embed(crops), fast.embed(crops)
    assert fast._onnx is not None and reference._onnx is None
    assert np.abs(expected - got).max() < 1e-5


def test_the_engine_gives_the_same_image_and_verdicts_on_either_runtime(astronaut):
    results, detector = [], None
    for runtime in ("torch", "onnxruntime"):
        engine = FaceAnonymizer(AnonymizerConfig(oracle_runtime=runtime, rotations=(0,), cache_size=0, threads=1,
                                                 screening=False), detector=detector)
        detector = engine.detector
        engine.generator.secret = b"same pseudonym on both runtimes"
        results.append(engine.anonymize(astronaut))
    torch_result, onnx_result = results
    assert np.array_equal(np.asarray(torch_result.pixels), np.asarray(onnx_result.pixels))
    for a, b in zip(torch_result.faces, onnx_result.faces, strict=True):
        assert a.method == b.method and a.attempts == b.attempts
        assert [v.oracle for v in a.verdicts] == [v.oracle for v in b.verdicts]
        assert np.allclose([v.similarity for v in a.verdicts], [v.similarity for v in b.verdicts], atol=1e-5)
        assert [v.anonymous for v in a.verdicts] == [v.anonymous for v in b.verdicts]


def test_a_damaged_or_stale_export_is_exported_again(tmp_path):
    net = _net(0)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    first = onnx_network(net, (1, 3, 16, 16), "tiny", tmp_path)
    assert first is not None
    with torch.no_grad():
        assert np.abs(first(x) - net(torch.from_numpy(x)).numpy()).max() < 1e-5
    path = tmp_path / "tiny.onnx"
    path.write_bytes(b"not a graph")  # damaged: its sha256 no longer matches the sidecar
    assert onnx_network(net, (1, 3, 16, 16), "tiny", tmp_path) is not None
    stale = _net(1)  # another network's weights, exported under the same name
    onnx_network(stale, (1, 3, 16, 16), "tiny", tmp_path)
    again = onnx_network(net, (1, 3, 16, 16), "tiny", tmp_path)
    assert again is not None
    with torch.no_grad():
        assert np.abs(again(x) - net(torch.from_numpy(x)).numpy()).max() < 1e-5


def test_sessions_do_not_spin_between_runs(tmp_path):
    """The engine alternates ONNX Runtime and torch; spinning intra-op threads would starve torch."""
    network = onnx_network(_net(0), (1, 3, 16, 16), "tiny", tmp_path, threads=2)
    assert network is not None
    options = network.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2


def test_where_onnxruntime_cannot_run(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="oracle_runtime"):
        AnonymizerConfig(oracle_runtime="tensorrt")
    with pytest.raises(ConfigError, match="generator_runtime"):
        AnonymizerConfig(generator_runtime="tensorrt")
    with pytest.raises(ModelLoadError, match="CPU only"):
        wants_onnxruntime("onnxruntime", "cuda:0")
    assert not wants_onnxruntime("auto", "cuda:0") and not wants_onnxruntime("torch", "cpu")
    monkeypatch.setattr(onnx_runtime, "onnxruntime_available", lambda: False)
    assert not wants_onnxruntime("auto", "cpu")
    with pytest.raises(ModelLoadError, match=r"pip install 'idmrag-plugin\[fast\]'"):
        wants_onnxruntime("onnxruntime", "cpu")
    monkeypatch.undo()

    def broken_export(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(onnx_runtime, "_export", broken_export)
    assert onnx_network(_net(0), (1, 3, 16, 16), "broken", tmp_path) is None  # auto: torch runs instead
    with pytest.raises(ModelLoadError, match="exporter exploded"):
        onnx_network(_net(0), (1, 3, 16, 16), "broken", tmp_path, required=True)


class _TwoInTwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(5, 4)

    def forward(self, image: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(image) * self.fc(code)[:, :, None, None]
        return h, h.mean(dim=(2, 3))


def test_networks_of_several_inputs_and_outputs_run_on_onnxruntime(tmp_path):
    net = _TwoInTwoOut().eval()
    network = onnx_network(net, [(1, 3, 8, 8), (1, 5)], "two", tmp_path, required=True)
    rng = np.random.default_rng(1)
    image, code = rng.standard_normal((3, 3, 8, 8)).astype(np.float32), rng.standard_normal((3, 5)).astype(np.float32)
    got = network.run(image, code)  # another batch size than exported with
    with torch.no_grad():
        expected = net(torch.from_numpy(image), torch.from_numpy(code))
    assert len(got) == 2
    for g, e in zip(got, expected, strict=True):
        assert np.abs(g - e.numpy()).max() < 1e-5
    with pytest.raises(ValueError, match="takes 2 inputs"):
        network.run(image)


@pytest.fixture(scope="module")
def generators(tmp_path_factory):
    """The packaged default generator on torch and on ONNX Runtime, one pseudonym secret."""
    cache = tmp_path_factory.mktemp("generator_cache")
    built = {}
    for runtime in ("torch", "onnxruntime"):
        generator = FaceAnonymizer(AnonymizerConfig(generator_runtime=runtime, cache_dir=cache, threads=1)).generator
        generator.secret = b"one secret for both runtimes"
        built[runtime] = generator
    return built


def test_the_generator_s_networks_on_onnxruntime_draw_what_torch_draws(generators, camera_face):
    slow, fast = generators["torch"], generators["onnxruntime"]
    (id_slow, attr_slow), (id_fast, attr_fast) = slow.encode(camera_face[None]), fast.encode(camera_face[None])
    assert fast._encoder_onnx is not None and slow._encoder_onnx is None
    assert np.abs(id_slow - id_fast).max() < 1e-4 and np.abs(attr_slow - attr_fast).max() < 1e-4
    code = slow.replacement_code(id_slow[0], 0)
    drawn_slow, drawn_fast = slow._render(code[None], camera_face, attr_slow), fast._render(code[None], camera_face, attr_slow)
    assert fast._renderer_onnx is not None and slow._renderer_onnx is None
    # the refiner runs on ONNX Runtime too, where there is one to run (a 128 px renderer needs none)
    assert fast.refiner_dir is None or fast._refiner_onnx is not None
    difference = np.abs(drawn_slow.astype(int) - drawn_fast.astype(int))
    assert difference.max() <= 2 and difference.mean() < 0.05  # float rounding, a level here and there


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_the_original_under_the_mask_never_reaches_the_drawing(generators, camera_face, runtime):
    """Pixels under the inpainting mask can be anything without changing the drawing: the
    exported graphs blank the mask as the torch modules do, and bringing the crop down to the
    renderer's resolution mixes no pixel under the mask into the context at its edge."""
    fast = generators[runtime]
    id_mu, attr_mu = fast.encode(camera_face[None])
    code = fast.replacement_code(id_mu[0], 0)
    drawn = fast._render(code[None], camera_face, attr_mu)
    tampered = camera_face.copy()
    inside = fast.mask(128) > 0.5
    tampered[inside] = np.random.default_rng(0).integers(0, 256, (int(inside.sum()), 3), dtype=np.uint8)
    assert (fast._renderer_onnx is not None) == (runtime == "onnxruntime")
    assert np.array_equal(fast._render(code[None], tampered, attr_mu), drawn)


def test_a_face_drawn_again_is_not_encoded_again(generators, camera_face, monkeypatch):
    from idmrag_plugin.engine.generator import GenerationRequest

    fast = generators["onnxruntime"]
    calls = []
    original = type(fast).encode
    monkeypatch.setattr(type(fast), "encode", lambda self, faces: calls.append(faces.copy()) or original(self, faces))
    crop = camera_face.copy()
    crop[0, 0] ^= 1  # a crop this generator has not seen
    first = fast.generate(GenerationRequest(crop, attempt=0, seed=1))
    second = fast.generate(GenerationRequest(crop, attempt=1, seed=2))
    # (the speckle reference context is encoded once per generator too)
    assert sum(np.array_equal(faces[0], crop) for faces in calls) == 1
    assert not np.array_equal(first, second)  # another pseudonym, the same codes
