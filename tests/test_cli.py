from __future__ import annotations

import json

import numpy as np
from PIL import Image

from idmrag_plugin.cli import main


def test_anonymize_bundled_sample(tmp_path):
    """The README's first command: the default engine replaces the face with a generated one
    that every oracle judges a different person."""
    assert main(["anonymize", "sample:astronaut", "-o", str(tmp_path), "-q"]) == 0
    report = json.loads((tmp_path / "astronaut.json").read_text())
    assert report["status"] == "anonymized" and len(report["faces"]) == 1
    (face,) = report["faces"]
    assert face["method"] == "generated" and face["verified"]
    assert {"dlib", "facenet", "facenet@box"} <= {v["oracle"] for v in face["oracles"]}
    assert all(v["anonymous"] and v["similarity"] < v["threshold"] for v in face["oracles"])
    image = Image.open(tmp_path / "astronaut.png")
    assert image.size == (512, 512) and not image.getexif()


def test_folder_with_a_corrupt_file(tmp_path, astronaut, no_face_image):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(astronaut).save(src / "sub" / "person.jpg")
    Image.fromarray(no_face_image).save(src / "cup.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "out"
    assert main(["anonymize", str(src), "-o", str(out), "-q", "--format", "JPEG", "--generator", "none"]) == 1
    assert json.loads((out / "sub" / "person.jpg.json").read_text())["faces"][0]["method"] == "obfuscated"
    assert (out / "sub" / "person.jpg.jpg").is_file() and (out / "cup.png.jpg").is_file()
    broken = json.loads((out / "broken.jpg.json").read_text())
    assert broken["status"] == "error" and "decode" in broken["error"]
    assert not (out / "broken.jpg.jpg").exists()  # nothing written for what could not be anonymized
    assert np.asarray(Image.open(out / "cup.png.jpg")).shape == no_face_image.shape


def test_missing_input_is_a_clean_error(tmp_path, capsys):
    assert main(["anonymize", str(tmp_path / "nope.jpg"), "-o", str(tmp_path / "o"), "-q"]) == 2


def test_same_stem_different_suffix_never_overwrite(tmp_path, astronaut, no_face_image):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(astronaut).save(src / "photo.jpg")
    Image.fromarray(no_face_image).save(src / "photo.png")
    Image.fromarray(no_face_image).save(src / "photo_1.png")
    out = tmp_path / "out"
    assert main(["anonymize", str(src), "-o", str(out), "-q", "--generator", "none"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "photo.jpg.json", "photo.jpg.png", "photo.png.json", "photo.png.png", "photo_1.png.json", "photo_1.png.png",
    ]
    assert json.loads((out / "photo.jpg.json").read_text())["faces"]  # the astronaut's record survived
    assert not json.loads((out / "photo.png.json").read_text())["faces"]


def test_an_input_named_twice_is_an_error_not_an_overwrite(tmp_path, astronaut, no_face_image):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    Image.fromarray(astronaut).save(first / "photo.jpg")
    Image.fromarray(no_face_image).save(second / "photo.jpg")
    out = tmp_path / "out"
    assert main(["anonymize", str(first / "photo.jpg"), str(second / "photo.jpg"), "-o", str(out), "-q",
                 "--generator", "none"]) == 1
    assert json.loads((out / "photo.jpg.json").read_text())["faces"]  # the first one's output stands


def test_degenerate_and_crashing_inputs_are_reported_and_the_rest_goes_on(tmp_path, astronaut):
    src = tmp_path / "in"
    src.mkdir()
    for i, shape in enumerate([(1, 1), (2, 3), (13, 13), (1, 4000)]):
        Image.fromarray(np.full((*shape, 3), 90, np.uint8)).save(src / f"tiny{i}.png")
    Image.fromarray(astronaut).save(src / "z_person.jpg")
    out = tmp_path / "out"
    assert main(["anonymize", str(src), "-o", str(out), "-q", "--generator", "none"]) == 0
    for i in range(4):
        assert json.loads((out / f"tiny{i}.png.json").read_text())["status"] == "no_faces"
    assert json.loads((out / "z_person.jpg.json").read_text())["faces"][0]["method"] == "obfuscated"


def test_help_shows_defaults_and_meanings(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["anonymize", "--help"])
    text = capsys.readouterr().out
    for option, default in (("--rotations", "0,45,90,135,180,225,270,315"), ("--privacy-level", "far1e-2"),
                            ("--on-failure", "obfuscate"), ("--detector", "mtcnn")):
        assert option in text and f"(default: {default})" in " ".join(text.split())


def test_engine_options_reach_the_config():
    import argparse

    from idmrag_plugin.cli import _add_engine_options, _engine_config

    parser = argparse.ArgumentParser()
    _add_engine_options(parser)
    assert _engine_config(parser.parse_args([])).border_search is True
    config = _engine_config(parser.parse_args(["--no-border-search", "--rotations", "0,180"]))
    assert config.border_search is False and config.rotations == (0, 180)
    assert _engine_config(parser.parse_args([])).negative_search is True
    assert _engine_config(parser.parse_args(["--no-negative-search"])).negative_search is False
    assert _engine_config(parser.parse_args([])).stretch_search is True
    assert _engine_config(parser.parse_args([])).grey_search is True
    assert _engine_config(parser.parse_args(["--no-grey-search"])).grey_search is False
    assert _engine_config(parser.parse_args([])).denoise_search is True
    assert _engine_config(parser.parse_args(["--no-denoise-search"])).denoise_search is False
    assert _engine_config(parser.parse_args(["--no-stretch-search"])).stretch_search is False
    assert _engine_config(parser.parse_args([])).hog_search is True
    assert _engine_config(parser.parse_args(["--no-hog-search"])).hog_search is False
    assert _engine_config(parser.parse_args([])).keep_outside_face is True
    assert _engine_config(parser.parse_args(["--redraw-whole-ellipse"])).keep_outside_face is False
    assert _engine_config(parser.parse_args([])).keep_expression is True
    assert _engine_config(parser.parse_args(["--any-expression"])).keep_expression is False
    assert _engine_config(parser.parse_args([])).keep_glasses is True
    assert _engine_config(parser.parse_args(["--any-glasses"])).keep_glasses is False
    assert _engine_config(parser.parse_args([])).match_sharpness is True
    assert _engine_config(parser.parse_args(["--any-sharpness"])).match_sharpness is False
