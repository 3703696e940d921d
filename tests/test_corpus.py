"""Corpus anonymization on a local Ray runtime: complete, fail-closed, resumable."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="install the ray extra")
pq = pytest.importorskip("pyarrow.parquet")

from idmrag_plugin import AnonymizerConfig, IdmragError
from idmrag_plugin.corpus import anonymize_corpus, list_sources


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, astronaut, camera, no_face_image):
    src = tmp_path_factory.mktemp("corpus")
    (src / "people").mkdir()
    Image.fromarray(astronaut).save(src / "people" / "astronaut.jpg", quality=95)
    Image.fromarray(camera).save(src / "people" / "camera.png")
    Image.fromarray(no_face_image).save(src / "cup.jpg")
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    Image.fromarray(rgba).save(src / "people" / "astronaut_rgba.png")
    (src / "truncated.jpg").write_bytes((src / "people" / "astronaut.jpg").read_bytes()[:2000])
    (src / "empty.png").write_bytes(b"")
    (src / "notes.png").write_text("this is text, not a picture")
    (src / "readme.txt").write_text("not listed: not an image suffix")
    return src


@pytest.fixture(scope="module", autouse=True)
def ray_runtime():
    """One local Ray runtime for the module: each job reuses it instead of starting its own
    (about 5 s a start and shutdown on this CPU); a job shuts down only a runtime it started."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_list_file_of_paths_and_urls(tmp_path, corpus):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# comment\n{corpus / 'cup.jpg'}\nhttps://example.org/a/b/photo.jpg\n\n")
    items = list_sources(listing)
    assert [i.source for i in items] == [str(corpus / "cup.jpg"), "https://example.org/a/b/photo.jpg"]
    assert items[1].relative.startswith("urls/") and items[1].relative.endswith("_photo")


def test_corpus_is_complete_fail_closed_and_resumable(tmp_path, corpus, astronaut):
    dst = tmp_path / "out"
    first = anonymize_corpus(corpus, dst, limit=3, actors=2, batch_size=2)  # two batches, one per actor
    assert first.total == 7 and first.processed == 3 and first.skipped == 0
    done_first = {p.name: p.stat().st_mtime_ns for p in (dst / "records").glob("*.json")}
    assert len(done_first) == 3

    second = anonymize_corpus(corpus, dst, batch_size=2)  # the interrupted run's rest
    assert second.skipped == 3 and second.processed == 4
    for name, mtime in done_first.items():  # nothing done twice
        assert (dst / "records" / name).stat().st_mtime_ns == mtime

    rows = {r["source"].split("/")[-1]: r for r in pq.read_table(dst / "report.parquet").to_pylist()}
    assert len(rows) == 7
    for bad in ("truncated.jpg", "empty.png", "notes.png"):
        assert rows[bad]["status"] == "error" and rows[bad]["output"] is None and rows[bad]["error"]
    assert rows["cup.jpg"]["status"] == "no_faces"
    for good in ("astronaut.jpg", "camera.png", "astronaut_rgba.png"):  # the default engine: generated faces
        methods = json.loads(rows[good]["methods"])
        assert rows[good]["status"] == "anonymized" and methods and set(methods) <= {"generated", "obfuscated"}
    assert "generated" in json.loads(rows["astronaut.jpg"]["methods"])
    written = sorted(p.relative_to(dst / "images").as_posix() for p in (dst / "images").rglob("*.png"))
    assert written == [
        "cup.jpg.png", "people/astronaut.jpg.png", "people/astronaut_rgba.png.png", "people/camera.png.png"
    ]
    out = np.asarray(Image.open(dst / "images" / "people" / "astronaut.jpg.png").convert("RGB")).astype(int)
    face = (slice(90, 150), slice(195, 255))
    assert np.abs(out[face] - astronaut[face]).mean() > 20  # no original face was written
    assert not list(dst.rglob("*.tmp"))

    third = anonymize_corpus(corpus, dst)
    assert third.processed == 0 and third.skipped == 7


def test_degenerate_images_same_stems_and_crashes_are_records_not_failures(tmp_path, astronaut, no_face_image):
    src = tmp_path / "src"
    (src / "c").mkdir(parents=True)
    Image.fromarray(astronaut).save(src / "c" / "photo.jpg")
    Image.fromarray(no_face_image).save(src / "c" / "photo.png")
    for i, shape in enumerate([(1, 1), (13, 13), (2, 3000)]):
        Image.fromarray(np.full((*shape, 3), 70, np.uint8)).save(src / f"tiny{i}.png")
    dst = tmp_path / "dst"
    summary = anonymize_corpus(src, dst, config=AnonymizerConfig(generator="none"))
    assert summary.processed == 5 and summary.errors == 0
    rows = {r["source"].split("/")[-1]: r for r in pq.read_table(dst / "report.parquet").to_pylist()}
    assert {rows[f"tiny{i}.png"]["status"] for i in range(3)} == {"no_faces"}
    assert rows["photo.jpg"]["output"] == "images/c/photo.jpg.png"
    assert rows["photo.png"]["output"] == "images/c/photo.png.png"
    assert json.loads(rows["photo.jpg"]["methods"]) == ["obfuscated"]


def test_report_is_written_even_when_every_item_fails(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("/dev/zero\n/nonexistent/photo.jpg\nfile:///etc/passwd\nhttp://127.0.0.1:9/x.jpg\n")
    dst = tmp_path / "dst"
    summary = anonymize_corpus(listing, dst, config=AnonymizerConfig(generator="none"))
    assert summary.errors == 4 and summary.written == 0
    rows = pq.read_table(dst / "report.parquet").to_pylist()
    assert len(rows) == 4 and all(r["status"] == "error" and r["error"] for r in rows)
    by_source = {r["source"]: r["error"] for r in rows}
    assert "regular" in by_source["/dev/zero"]
    assert "not a public address" in by_source["http://127.0.0.1:9/x.jpg"]


def test_two_sources_that_would_share_an_output_are_refused(tmp_path, no_face_image):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(no_face_image).save(src / "Photo.JPG")
    Image.fromarray(no_face_image).save(src / "photo.jpg")
    if len(list(src.iterdir())) < 2:
        pytest.skip("case-insensitive file system")
    with pytest.raises(IdmragError, match="both be written"):
        list_sources(src)
