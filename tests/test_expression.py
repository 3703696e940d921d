"""The mouth screen: a new pseudonym's drawing keeps the mouth as open or closed as the photo's."""

from __future__ import annotations

import numpy as np
import pytest

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer


def test_a_smile_showing_teeth_is_open_and_a_closed_mouth_drawn_for_it_is_unfit(default_generator, astronaut_crop,
                                                                               camera_face):
    from idmrag_plugin.generation.expression import mouth_opening
    from idmrag_plugin.generation.renderer_generator import MOUTH_TOLERANCE

    generator = default_generator
    smiling, closed = astronaut_crop, camera_face
    outliner = generator._outliner
    assert mouth_opening(outliner.points(smiling)) > 0.05  # her smile shows her teeth
    assert mouth_opening(outliner.points(closed)) < 0.02
    assert generator.misexpressed(smiling, smiling) == 0.0
    # the cameraman's closed mouth shown in her photo's place, and the other way round
    assert generator.misexpressed(closed, smiling) > 1.0
    assert generator.misexpressed(smiling, closed) > 1.0
    assert MOUTH_TOLERANCE < 0.07


@pytest.mark.parametrize("keep", [True, False])
def test_the_config_turns_the_mouth_screen_on_and_off(engine, astronaut, keep, monkeypatch):
    anonymizer = FaceAnonymizer(AnonymizerConfig(generator="renderer-lcm", keep_expression=keep, cache_size=0),
                                detector=engine.detector, oracles=engine.oracles)
    generator = anonymizer.generator
    generator.secret = b"test-expression"
    assert generator.keep_expression is keep
    judged = []
    screen = generator.misexpressed
    monkeypatch.setattr(generator, "misexpressed", lambda shown, face: judged.append(1) or screen(shown, face))
    result = anonymizer.anonymize(astronaut)
    assert result.counts() == {"generated": 1}
    assert bool(judged) is keep


def test_a_mouth_further_off_is_more_unfit_but_never_beyond_the_cap(default_generator, astronaut_crop, monkeypatch):
    from idmrag_plugin.generation.renderer_generator import MOUTH_TOLERANCE, MOUTH_UNFITNESS_CAP

    generator, crop = default_generator, astronaut_crop
    points = generator._outliner.points(crop)
    generator._original_points(crop)  # the photo's reading, remembered before the predictor is replaced
    bridge_to_chin = float(np.linalg.norm(points[8] - points[27]))
    scores = []
    for off in (0.5, 1.5, 3.0, 30.0):
        opened = points.copy()
        opened[[65, 66, 67], 1] += off * MOUTH_TOLERANCE * bridge_to_chin  # the lower lip dropped
        monkeypatch.setattr(generator._outliner, "points", lambda shown, opened=opened: opened)
        scores.append(generator.misexpressed(crop, crop))
    assert scores[0] == pytest.approx(0.5, abs=0.02)
    assert 1.0 < scores[1] < scores[2] < scores[3] <= MOUTH_UNFITNESS_CAP
