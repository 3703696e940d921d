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
    results = []
    for runtime in ("torch", "onnxruntime"):
        engine = FaceAnonymizer(AnonymizerConfig(oracle_runtime=runtime, rotations=(0,), cache_size=0, threads=2,
                                                 screening=False))
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
