"""Where an original came from never travels on: ids, error reasons, image links in text."""

from __future__ import annotations

import pytest

from idmrag_plugin.integrations._locations import (
    pseudonymous_id,
    reveals_location,
    shareable_reason,
    unlink_images,
)


@pytest.mark.parametrize(
    "identifier",
    ["/data/people/Jane_Doe/Jane_Doe_0001.jpg", "/data/Jane_Doe_0001.jpg_part_0", "https://cdn.example.com/a/b",
     "C:\\photos\\jane", "Jane_Doe_0001.JPEG", "s3://bucket/key"],
)
def test_ids_spelling_a_location_are_recognised(identifier):
    assert reveals_location(identifier)


@pytest.mark.parametrize("identifier", ["8f14e45f-ceea-467f-a0e6-1a2b3c4d5e6f", "42", "doc-7_part_3"])
def test_opaque_ids_are_not(identifier):
    assert not reveals_location(identifier)


def test_a_known_location_inside_an_id_is_recognised():
    assert reveals_location("img-cam7-000123-v2", known=["cam7-000123"])


def test_stand_in_ids_are_stable_per_secret_and_keyed():
    path = "/data/people/Jane_Doe/Jane_Doe_0001.jpg"
    first = pseudonymous_id(path, b"secret-a")
    assert first == pseudonymous_id(path, b"secret-a")
    assert first != pseudonymous_id(path, b"secret-b")
    assert first != pseudonymous_id(path + "_part_0", b"secret-a")
    assert "Jane" not in first and "/" not in first


def test_reasons_name_no_path_or_url():
    message = (
        "image given only by URL and fetch_urls is off: 'https://example.com/people/Jane_Doe.jpg' withheld; "
        "no regular image file at /srv/photos/Jane_Doe/1.png; cannot read C:\\photos\\Jane_Doe.jpg; Jane_Doe_0002.webp"
    )
    reason = shareable_reason(message, known=["cam7-000123"])
    assert "Jane" not in reason and "example.com" not in reason and "/srv" not in reason
    assert reason.startswith("image given only by URL and fetch_urls is off: '<location>' withheld")
    assert shareable_reason("refusing cam7-000123 now", known=["cam7-000123"]) == "refusing <location> now"


def test_image_links_in_text_are_removed_keeping_their_alt_text():
    text = (
        'Gala ![Jane at the gala](https://example.com/Jane_Doe.png "title") and <img alt="Jane" src="/srv/j.jpg">, '
        "see https://cdn.example.com/Jane_Doe_4.webp?w=300. Inline ![x](data:image/png;base64,AAAA) stays; "
        "a page https://example.com/about and a picture.jpgs stay."
    )
    unlinked, count = unlink_images(text)
    assert count == 3
    assert "example.com/Jane" not in unlinked and "/srv/" not in unlinked
    assert "[image link removed by idmrag-plugin: Jane at the gala]" in unlinked
    assert "[image link removed by idmrag-plugin: Jane]," in unlinked
    assert "[image link removed by idmrag-plugin]. Inline" in unlinked
    assert "data:image/png;base64,AAAA" in unlinked and "https://example.com/about" in unlinked


def test_a_text_that_is_one_image_url_is_left_to_the_location_rules():
    assert unlink_images(" https://example.com/Jane_Doe.png ") == (" https://example.com/Jane_Doe.png ", 0)


def test_every_way_text_makes_a_browser_fetch_a_picture_is_unlinked():
    """Reference-style Markdown images, a picture's sources, SVG images, video posters,
    objects and CSS backgrounds fetch the original as surely as ``<img src>`` does."""
    text = (
        "![crew][photo] and ![Jane]\n\n[photo]: https://cdn.example.org/p?id=7 \"Crew\"\n"
        "[jane]: <https://cdn.example.org/jane>\n[docs]: https://example.org/manual\nsee [docs][]\n"
        '<picture><source srcset="https://pics.test/a 1x, https://pics.test/b 2x"><img src="https://pics.test/c"></picture>\n'
        '<svg><image href="https://pics.test/d"/></svg><video poster="https://pics.test/e"></video>'
        '<object data="https://pics.test/f"></object><div style="background:url(\'https://pics.test/g\')"></div>\n'
        '<input type="text" name="q"><img src="data:image/png;base64,AAAA">'
    )
    unlinked, count = unlink_images(text)
    assert count == 8
    for fetched in ("cdn.example.org", "pics.test"):
        assert fetched not in unlinked
    assert "[docs]: https://example.org/manual" in unlinked  # a link, not an image
    assert '<input type="text" name="q">' in unlinked and "data:image/png;base64,AAAA" in unlinked
    assert unlink_images("url(data:image/png;base64,AAAA) <video controls></video>")[1] == 0
