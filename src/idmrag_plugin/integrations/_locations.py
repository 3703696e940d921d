"""Where an original came from, kept out of what the integrations hand on: node and document
ids that spell a path or URL, error messages quoting one, and links to image files inside
text (an image the engine never saw; a chat UI rendering the model's answer would load it)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

#: Suffixes that make a path or URL an image reference.
IMAGE_SUFFIXES = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".avif", ".heic", ".heif",
    ".ico", ".jp2", ".j2k", ".pgm", ".ppm", ".pbm", ".pnm", ".psd", ".tga", ".qoi",
)
_SUFFIX = "|".join(sorted((s[1:] for s in IMAGE_SUFFIXES), key=len, reverse=True))
_IMAGE_NAME = re.compile(rf"\.(?:{_SUFFIX})(?![A-Za-z0-9])", re.IGNORECASE)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
#: A token of text holding a path separator or a URL scheme: what an error message quotes.
_LOCATION_TOKEN = re.compile(r"""[^\s'"<>()\[\]{},;]*(?:[/\\]|://)[^\s'"<>()\[\]{},;]*""")

_MARKDOWN_IMAGE = re.compile(r"!\[(?P<alt>[^\]\n]*)\]\(\s*<?(?P<target>[^)\s>]*)>?(?:\s+(?:\"[^\"\n]*\"|'[^'\n]*'))?\s*\)")
#: Tags that make a browser fetch a picture: images, a picture's or media's sources, SVG's
#: image, image inputs, a video's poster, objects and embeds.
_HTML_IMAGE = re.compile(r"<(?:img|source|image|input|video|object|embed)\b[^>]*>", re.IGNORECASE)
#: The attributes of those tags that name what is fetched.
_HTML_SOURCE = re.compile(
    r"""\b(?:src|srcset|poster|data|href|xlink:href)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.IGNORECASE)
#: A CSS ``url(...)`` (a background image in a style attribute or sheet).
_CSS_URL = re.compile(r"""\burl\(\s*(?P<quote>['"]?)(?P<target>[^'")\s]+)(?P=quote)\s*\)""", re.IGNORECASE)
#: Markdown's reference-style images: ``![alt][label]``, ``![label][]``, ``![label]``.
_MARKDOWN_IMAGE_REFERENCE = re.compile(r"!\[(?P<alt>[^\]\n]*)\](?:\[(?P<label>[^\]\n]*)\])?(?!\()")
#: A Markdown link reference definition: ``[label]: target "title"``.
_MARKDOWN_DEFINITION = re.compile(r"^(?P<lead> {0,3}\[(?P<label>[^\]\n]+)\]:[ \t]*)<?(?P<target>[^\s>]+)>?(?P<rest>.*)$",
                                  re.MULTILINE)
_HTML_ALT = re.compile(r"""\balt\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.IGNORECASE)
_BARE_IMAGE_URL = re.compile(
    rf"""(?:https?|ftp|file|s3|gs)://[^\s<>"'()\[\]]+?\.(?:{_SUFFIX})(?:[?#][^\s<>"'()\[\]]*?)?(?=[.,;:!?]*(?:[\s<>"'()\[\]]|$))""",
    re.IGNORECASE,
)

#: Key of the ids rewritten where the engine's generator has no pseudonym secret.
_PROCESS_KEY = secrets.token_bytes(32)


def names_image_location(text: str) -> bool:
    """True when ``text`` (an id, a message) spells a URL or an image file's name."""
    return bool(_URL.search(text) or _IMAGE_NAME.search(text))


def reveals_location(identifier: str, known: Iterable[str] = ()) -> bool:
    """True when ``identifier`` spells where an image came from: a URL, an image file's name,
    a path, or one of the ``known`` locations (its path, URL or file name)."""
    if names_image_location(identifier) or "/" in identifier or "\\" in identifier:
        return True
    return any(isinstance(value, str) and len(value) >= 4 and value in identifier for value in known)


def known_locations(values: Iterable[object]) -> list[str]:
    """The places an image came from, as strings (paths, URLs: ``str``, ``Path`` or URL
    objects; not data, which runs longer), each followed by its file name."""
    known = [str(v) for v in values if isinstance(v, (str, Path)) or (v is not None and hasattr(v, "host"))]
    known = [v for v in known if 0 < len(v) <= 4096]
    return known + [Path(v).name for v in known if Path(v).name]


def pseudonymous_id(identifier: str, secret: bytes | None) -> str:
    """A stable stand-in for ``identifier``: the same id and secret give the same stand-in
    (relationships between nodes and a docstore's upserts keep working), and without the
    secret it cannot be confirmed from a guessed path."""
    key = secret if secret else _PROCESS_KEY
    digest = hmac.new(key, b"idmrag id\x00" + identifier.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return "idmrag-" + digest.hexdigest()[:32]


def shareable_reason(message: str, known: Iterable[str] = ()) -> str:
    """``message`` with every path, URL and ``known`` location in it replaced by
    ``<location>``: the form of an error that may travel with the data (a note to the model,
    a report, an instrumentation event). Logs keep the full message."""
    for value in known:
        if isinstance(value, str) and len(value) >= 4:
            message = message.replace(value, "<location>")
    message = _LOCATION_TOKEN.sub("<location>", message)
    return " ".join(word if not _IMAGE_NAME.search(word) else "<location>" for word in message.split(" "))


def links_images(text: str) -> bool:
    """True when ``text`` links to an image by path or URL (Markdown, HTML or a bare URL)."""
    return bool(_MARKDOWN_IMAGE.search(text) or _BARE_IMAGE_URL.search(text)
                or any(_fetches(m.group(0)) for m in _HTML_IMAGE.finditer(text))
                or any(not _is_data_uri(m.group("target")) for m in _CSS_URL.finditer(text))
                or _referenced_image_labels(text))


def _fetches(tag: str) -> bool:
    """Whether an HTML tag of :data:`_HTML_IMAGE` makes a browser fetch something: a source
    attribute other than image data (an ``<img>`` without any is left to be removed too)."""
    values = ["".join(groups) for groups in _HTML_SOURCE.findall(tag)]
    if not values:
        return tag[1:4].lower() == "img"
    return not all(_is_data_uri(value) for value in values)


def _referenced_image_labels(text: str) -> set[str]:
    """Labels (case-folded) of Markdown reference-style images that a definition in ``text``
    points at something other than image data."""
    if "![" not in text:
        return set()
    used = {" ".join((m.group("label") or m.group("alt")).split()).casefold()
            for m in _MARKDOWN_IMAGE_REFERENCE.finditer(text)}
    return {label for m in _MARKDOWN_DEFINITION.finditer(text)
            if (label := " ".join(m.group("label").split()).casefold()) in used and not _is_data_uri(m.group("target"))}


def _is_data_uri(target: str) -> bool:
    return target.strip()[:5].lower() == "data:"


def unlink_images(text: str) -> tuple[str, int]:
    """``text`` with its links to images removed (image data URIs are left to the engine),
    and how many were removed. A Markdown or HTML image keeps its alt text; a whole text that
    is one image URL is left to the callers, which drop it as a location."""
    removed = 0

    def note(alt: str) -> str:
        nonlocal removed
        removed += 1
        alt = " ".join(alt.split())
        return f"[image link removed by idmrag-plugin: {alt}]" if alt else "[image link removed by idmrag-plugin]"

    def markdown(match: re.Match[str]) -> str:
        return match.group(0) if _is_data_uri(match.group("target")) else note(match.group("alt"))

    def html(match: re.Match[str]) -> str:
        tag = match.group(0)
        if not _fetches(tag):
            return tag  # image data (left to the engine), or nothing fetched
        alt = _HTML_ALT.search(tag)
        return note("".join(alt.groups(default="")) if alt else "")

    def css(match: re.Match[str]) -> str:
        return match.group(0) if _is_data_uri(match.group("target")) else f"url({note('')})"

    labels = _referenced_image_labels(text)

    def definition(match: re.Match[str]) -> str:
        if " ".join(match.group("label").split()).casefold() not in labels:
            return match.group(0)
        return match.group("lead") + note("")

    stripped = text.strip()
    if _BARE_IMAGE_URL.fullmatch(stripped):
        return text, 0
    text = _MARKDOWN_IMAGE.sub(markdown, text)
    if labels:
        text = _MARKDOWN_DEFINITION.sub(definition, text)
    text = _HTML_IMAGE.sub(html, text)
    text = _CSS_URL.sub(css, text)
    text = _BARE_IMAGE_URL.sub(lambda _: note(""), text)
    return text, removed
