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
    assert {v["oracle"] for v in face["oracles"]} == {"dlib", "facenet"}
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
    assert json.loads((out / "sub" / "person.json").read_text())["faces"][0]["method"] == "obfuscated"
    assert (out / "sub" / "person.jpg").is_file() and (out / "cup.jpg").is_file()
    broken = json.loads((out / "broken.json").read_text())
    assert broken["status"] == "error" and "decode" in broken["error"]
    assert not (out / "broken.jpg").exists()  # nothing written for what could not be anonymized
    assert np.asarray(Image.open(out / "cup.jpg")).shape == no_face_image.shape


def test_missing_input_is_a_clean_error(tmp_path, capsys):
    assert main(["anonymize", str(tmp_path / "nope.jpg"), "-o", str(tmp_path / "o"), "-q"]) == 2
