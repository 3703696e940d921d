"""The differentiable landmark judge the renderer's landmark term reads: MTCNN's output
network on a fixed box of the aligned crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from idmrag_plugin.engine.align import align_face
from idmrag_plugin.training.landmark_judge import LandmarkJudge
from idmrag_plugin.training.train_renderer import landmark_error


@pytest.fixture(scope="module")
def judge() -> LandmarkJudge:
    return LandmarkJudge()


def _aligned(image: np.ndarray, landmarks: np.ndarray, size: int = 128) -> torch.Tensor:
    crop = align_face(image, landmarks, size).crop
    return torch.as_tensor(crop).permute(2, 0, 1)[None].float() / 127.5 - 1.0


# a turned face (the cameraman's) sits off the fixed box, which costs the judge some accuracy
@pytest.mark.parametrize(("name", "within"), [("astronaut", 0.1), ("camera", 0.25)])
def test_the_judge_finds_the_detector_s_landmarks_on_an_aligned_face(engine, judge, name, within, request):
    image = request.getfixturevalue(name)
    face = max(engine.detector.detect(image), key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))
    x = _aligned(image, np.asarray(face.landmarks))
    crop = ((x[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    found = engine.detector.detect(crop)
    assert found, "the aligned crop should still hold a face"
    reference = torch.as_tensor(np.asarray(max(found, key=lambda d: d.score).landmarks), dtype=torch.float32) / 128
    for size in (128, 64):
        small = F.interpolate(x, size=(size, size), mode="area") if size != 128 else x
        with torch.no_grad():
            marks = judge(small)
        assert marks.shape == (1, 5, 2)
        assert float(landmark_error(marks, reference[None])[0]) < within, size


def test_the_judge_follows_a_moved_face_and_passes_gradients_to_the_image(engine, judge, astronaut):
    face = engine.detector.detect(astronaut)[0]
    x = F.interpolate(_aligned(astronaut, np.asarray(face.landmarks)), size=(64, 64), mode="area")
    moved = torch.roll(x, shifts=(2, 3), dims=(2, 3))  # 3 px right, 2 down
    with torch.no_grad():
        shift = (judge(moved) - judge(x))[0].mean(dim=0) * 64
    assert abs(float(shift[0]) - 3) < 1.0 and abs(float(shift[1]) - 2) < 1.0
    x = x.clone().requires_grad_(True)
    landmark_error(judge(x), torch.full((1, 5, 2), 0.5) + torch.rand(1, 5, 2) * 0.2).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in judge.parameters())


def test_landmark_error_is_in_inter_ocular_distances():
    target = torch.tensor([[[0.4, 0.5], [0.6, 0.5], [0.5, 0.6], [0.42, 0.7], [0.58, 0.7]]])
    assert float(landmark_error(target, target)[0]) == 0.0
    assert float(landmark_error(target + torch.tensor([0.02, 0.0]), target)[0]) == pytest.approx(0.1, abs=1e-5)
