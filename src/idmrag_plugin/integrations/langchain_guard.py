"""The model boundary for LangChain: a Runnable placed just before the chat model.

Whatever path an image took into the prompt (a retriever that was not wrapped, a user's
upload, a tool's output), the guard rewrites the messages the model receives::

    chain = prompt | FaceAnonymizingGuard() | llm          # or: FaceAnonymizingGuard().wrap(llm)

Image content blocks in every format LangChain passes to providers are anonymized and
re-sent as base64 data of the same block format: OpenAI-style ``image_url`` (data URI or
http(s) URL, fetched under the integrations' SSRF policy), LangChain's standard ``image``
blocks (``base64``/``data``/``url``, ``source_type``), Anthropic-style ``source`` blocks, and
``file`` blocks with an image MIME type. Images that cannot be anonymized (provider-hosted
file ids, undecodable data) and every ``video``/``audio`` block are replaced by a text
block saying so (``on_failure="raise"`` raises instead). A ``file`` or ``document`` block of
another type has the images under its fields anonymized (a photo declared as something else is
still a photo) and passes when what it holds is plain text; any other document (a PDF, an
office file, a provider file id or URL the guard cannot read) can hold photos the engine
cannot reach and is withheld by default (``withhold_documents``). A message whose text content is
itself an image (base64 or data URI) is anonymized too, and so are the images in an assistant
turn's tool-call arguments and in a message's ``additional_kwargs`` (both go back to the model
with the conversation). OpenAI-style dict messages (``{"role": ..., "content": ...}``), which
chat models take as readily as message objects, are guarded field by field. Reports go to each message
copy's ``response_metadata["idmrag_report"]``, which providers do not send. The guard opens
no traced run of its own (its input holds the originals); runs before it in the chain
are traced as they always are.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

try:
    from langchain_core.messages import AIMessage, BaseMessage
    from langchain_core.prompt_values import ChatPromptValue, PromptValue
    from langchain_core.runnables import Runnable, RunnableConfig
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the LangChain integration needs langchain-core: pip install 'idmrag-plugin[langchain]'"
    ) from exc

from idmrag_plugin.errors import IdmragError, ImageWithheldError, InvalidImageError
from idmrag_plugin.integrations._common import (
    DOCUMENT_WITHHELD,
    AnonymizedImage,
    AnonymizerBridge,
    anonymize_embedded_images,
    anonymize_inline_images,
    decode_base64_image,
    document_text,
    embeds_images,
    image_bytes_of,
    is_image_location,
    is_inline_image,
    sniff_image,
)
from idmrag_plugin.integrations.langchain import FaceAnonymizerCompressor
from idmrag_plugin.pipeline import FaceAnonymizer

logger = logging.getLogger(__name__)

REPORT_KEY = "idmrag_report"
_MEDIA_TYPES = ("video", "video_url", "audio", "audio_url", "input_audio")
#: Image blocks: OpenAI chat's ``image_url``, LangChain's and Anthropic's ``image``, OpenAI
#: Responses' ``input_image`` (an ``image_url`` string or a provider ``file_id``).
_IMAGE_TYPES = ("image_url", "image", "input_image")
#: Blocks that carry a file: LangChain's and OpenAI's ``file``, Anthropic's ``document``,
#: OpenAI Responses' ``input_file``.
_DOCUMENT_TYPES = ("file", "document", "input_file")
#: Why a block naming its content by a storage location (a Gemini file URI, an S3 location)
#: is withheld.
_UNREADABLE_LOCATION = "given by a storage location this guard cannot read"
#: Fields naming a file the guard cannot read: a URL, a provider's file id.
_FILE_REFERENCES = ("url", "file_id", "file_url")


def _decoded_payload(value: Any) -> bytes | None:
    """The bytes of a document's data field (bytes, base64, or a data URI); None when unreadable."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str):
        return None
    try:
        return decode_base64_image(value)
    except InvalidImageError:
        return None


def _plain_or_anonymized(before: list[bytes] | None, after: list[bytes] | None) -> bool:
    """Whether a document's payloads, ``before`` and ``after`` its images were anonymized where
    they sit, are all plain text or images the engine made (None: unreadable)."""
    return before is not None and after is not None and len(before) == len(after) and all(
        document_text(new) is not None or (sniff_image(new) and new != old) for old, new in zip(before, after, strict=True))


def _document_payloads(block: dict[str, Any]) -> list[bytes] | None:
    """Every payload a file or document block holds, decoded; None when it names one the guard
    cannot read (a URL, a provider file id) or holds undecodable data."""
    source = block.get("source")
    if isinstance(source, dict):  # Anthropic's document block
        kind = source.get("type")
        if kind == "text":
            return [str(source.get("data", "")).encode("utf-8")]
        if kind == "content":
            return []  # content blocks, each judged as a block of its own
        payload = _decoded_payload(source.get("data")) if kind == "base64" else None
        return None if payload is None else [payload]
    fields = block.get("file") if isinstance(block.get("file"), dict) else block  # OpenAI chat's file
    if any(fields.get(key) for key in _FILE_REFERENCES) or block.get("source_type") in ("url", "id"):
        return None
    data = [fields[key] for key in ("base64", "data", "file_data") if fields.get(key)]
    if not data:
        text = fields.get("text")
        return [text.encode("utf-8")] if isinstance(text, str) else None
    payloads = [_decoded_payload(value) for value in data]
    return None if any(p is None for p in payloads) else payloads  # type: ignore[misc]


def _note(kind: str, reason: str) -> dict[str, Any]:
    return {"type": "text", "text": f"[{kind} withheld by idmrag-plugin: {reason}]"}


class FaceAnonymizingGuard(Runnable[Any, Any]):
    """Anonymize every image in the messages passing through; hand everything else on as is.

    Args:
        engine: a shared :class:`FaceAnonymizer`; default: the one of ``anonymizer``.
        anonymizer: the settings (URL policy, output format) of a
            :class:`FaceAnonymizerCompressor`; default: a new one.
        withhold_media: replace video and audio blocks by a note (default True).
        withhold_documents: replace file and document blocks that are neither images nor
            plain text (PDFs, office files, provider file ids) by a note (default True):
            they can hold photos the engine cannot anonymize.
    """

    def __init__(
        self,
        engine: FaceAnonymizer | None = None,
        anonymizer: FaceAnonymizerCompressor | None = None,
        withhold_media: bool = True,
        withhold_documents: bool = True,
    ) -> None:
        self.anonymizer = anonymizer or FaceAnonymizerCompressor(engine=engine)
        self.withhold_media = withhold_media
        self.withhold_documents = withhold_documents

    def wrap(self, model: Runnable) -> Runnable:
        """``self | model``: the model, guarded."""
        return self | model

    # ------------------------------------------------------------------ Runnable
    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        # No run of its own: a traced run would hand the original images to every handler.
        return self._guard(input)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self.invoke, input, config)

    def _guard(self, value: Any) -> Any:
        bridge = self.anonymizer._bridge
        if isinstance(value, ChatPromptValue):
            return ChatPromptValue(messages=[self._message(m, bridge) for m in value.messages])
        if isinstance(value, PromptValue):
            return ChatPromptValue(messages=[self._message(m, bridge) for m in value.to_messages()])
        if isinstance(value, BaseMessage):
            return self._message(value, bridge)
        if isinstance(value, (list, tuple)):
            return [self._message(m, bridge) if isinstance(m, BaseMessage) else self._guard(m) for m in value]
        if isinstance(value, str):
            data = self._maybe_image(value, bridge, [])
            return value if data is None else data
        if isinstance(value, dict):
            # an OpenAI-style message ({"role": ..., "content": ...}), which chat models take as
            # readily as message objects: an untyped block, guarded field by field
            return self._block(value, bridge, [])
        return value

    # ------------------------------------------------------------------ messages
    def _message(self, message: BaseMessage, bridge: AnonymizerBridge) -> BaseMessage:
        reports: list[dict[str, Any]] = []
        content = message.content
        if isinstance(content, str):
            new = self._maybe_image(content, bridge, reports)
            new_content: Any = content if new is None else new
        else:
            new_content = [self._block(block, bridge, reports) for block in content]
        updates: dict[str, Any] = {"content": new_content} if new_content != content else {}
        # Providers send these too: an assistant turn's tool calls (their arguments go back to
        # the model with the conversation) and the provider-specific kwargs they came in.
        if message.additional_kwargs:
            kwargs = self._block(dict(message.additional_kwargs), bridge, reports)
            if kwargs != message.additional_kwargs:
                updates["additional_kwargs"] = kwargs
        if isinstance(message, AIMessage):
            for field in ("tool_calls", "invalid_tool_calls"):
                calls = getattr(message, field)
                guarded = [{**call, "args": self._block(call["args"], bridge, reports)} if call.get("args") else call
                           for call in calls]
                if guarded != calls:
                    updates[field] = guarded
        if not reports and not updates:
            return message
        metadata = dict(message.response_metadata)
        metadata[REPORT_KEY] = reports
        return message.model_copy(update={**updates, "response_metadata": metadata})

    @staticmethod
    def _withheld(exc: IdmragError, kind: str, bridge: AnonymizerBridge, reports: list) -> dict[str, Any]:
        """The note that stands for a ``kind`` withheld for ``exc`` (the failure policy applied
        first: ``on_failure="raise"`` raises), its reason reported."""
        bridge.withhold(exc, f"{kind} sent to the model")
        reason = bridge.reason(exc)
        reports.append({"status": "withheld", "error": reason})
        return _note(kind, reason)

    def _maybe_image(self, text: str, bridge: AnonymizerBridge, reports: list) -> str | None:
        """``text`` anonymized when it is an image or embeds some (Markdown, HTML data URIs);
        None when it has none."""
        try:
            data = image_bytes_of(text)
            if data is None:
                if not embeds_images(text):
                    return None

                def withheld(exc: IdmragError) -> str:
                    bridge.withhold(exc, "image sent to the model")
                    return _note("image", bridge.reason(exc))["text"]

                return anonymize_embedded_images(text, bridge.anonymize, reports, on_error=withheld)
            image = bridge.anonymize(data=data)
        except IdmragError as exc:
            return self._withheld(exc, "image", bridge, reports)["text"]
        reports.append(image.report)
        return image.data_uri if text[:5].lower() == "data:" else image.base64

    def _block(self, block: Any, bridge: AnonymizerBridge, reports: list) -> Any:
        if isinstance(block, str):
            new = self._maybe_image(block, bridge, reports)
            return block if new is None else new
        if not isinstance(block, dict):
            # raw bytes or an in-memory image in a provider's own block (Bedrock's
            # {"image": {"source": {"bytes": ...}}}), anonymized in kind
            return self._raw_image(block, bridge, reports) if is_inline_image(block) else block
        kind = str(block.get("type", ""))
        if kind == "text" and isinstance(block.get("text"), str):
            text = self._maybe_image(block["text"], bridge, reports)
            return block if text is None else {**block, "text": text}
        if kind in _MEDIA_TYPES:
            if not self.withhold_media:
                return block
            reports.append({"status": "withheld", "error": f"{kind} cannot be anonymized"})
            return _note(kind, "it cannot be anonymized")
        is_image_file = kind == "file" and str(block.get("mime_type", "")).startswith("image/")
        if kind in _DOCUMENT_TYPES and not is_image_file:
            return self._document(block, bridge, reports)
        if not kind:
            native = self._native(block, bridge, reports)
            if native is not None:
                return native
        if kind not in _IMAGE_TYPES and not is_image_file:
            return self._nested(block, bridge, reports)
        try:
            image = self._image_of(block, kind, bridge)
        except IdmragError as exc:
            return self._withheld(exc, "image", bridge, reports)
        reports.append(image.report)
        return self._rebuilt(block, kind, image)

    def _native(self, block: dict[str, Any], bridge: AnonymizerBridge, reports: list) -> dict[str, Any] | None:
        """A provider's own untyped block judged as the typed ones are, or None for any other
        dict: Gemini's ``file_data`` (a file by URI, which the guard cannot read) withheld;
        Bedrock's ``video`` withheld as media, its ``image`` or ``document`` by an S3 location
        withheld, its ``document`` by bytes passed only when plain text (or an image, which
        :meth:`_nested` anonymizes)."""
        if isinstance(block.get("file_data"), dict):
            return self._withheld(ImageWithheldError(f"file {_UNREADABLE_LOCATION}"), "file", bridge, reports)
        if isinstance(block.get("video"), dict):
            if not self.withhold_media:
                return None
            reports.append({"status": "withheld", "error": "video cannot be anonymized"})
            return _note("video", "it cannot be anonymized")
        for key in ("image", "document"):
            inner = block.get(key)
            source = inner.get("source") if isinstance(inner, dict) else None
            if not isinstance(source, dict):
                continue
            if "bytes" not in source:  # an S3 location, say
                return self._withheld(ImageWithheldError(f"{key} {_UNREADABLE_LOCATION}"), key, bridge, reports)
            if key == "document" and self.withhold_documents:
                rebuilt = self._nested(block, bridge, reports)
                before, after = (_decoded_payload(b[key]["source"]["bytes"]) for b in (block, rebuilt))
                if _plain_or_anonymized(None if before is None else [before], None if after is None else [after]):
                    return rebuilt
                return self._withheld(ImageWithheldError(DOCUMENT_WITHHELD), "document", bridge, reports)
        return None

    def _raw_image(self, value: Any, bridge: AnonymizerBridge, reports: list) -> Any:
        """An image given as bytes or an in-memory object, anonymized in kind, or a note."""
        try:
            return anonymize_inline_images(value, bridge.anonymize, reports)
        except IdmragError as exc:
            return self._withheld(exc, "image", bridge, reports)["text"]

    def _document(self, block: dict[str, Any], bridge: AnonymizerBridge, reports: list) -> dict[str, Any]:
        """A file or document block that declares no image: the images under its fields
        anonymized where they sit; passed on when everything it holds is plain text, else
        withheld unless ``withhold_documents`` is off."""
        rebuilt = self._nested(block, bridge, reports)
        if not self.withhold_documents or _plain_or_anonymized(_document_payloads(block), _document_payloads(rebuilt)):
            return rebuilt
        return self._withheld(ImageWithheldError(DOCUMENT_WITHHELD), "document", bridge, reports)

    def _nested(self, block: dict[str, Any], bridge: AnonymizerBridge, reports: list) -> dict[str, Any]:
        """Any other block with the blocks and images inside it anonymized: a tool result
        holding image blocks (Anthropic's ``tool_result``), a document's or a provider's own
        containers; image paths and URLs in its fields blanked."""
        new: dict[str, Any] = {}
        for key, value in block.items():
            if key == "type":
                new[key] = value
            elif isinstance(value, list):
                new[key] = [self._block(item, bridge, reports) for item in value]
            elif isinstance(value, dict):
                new[key] = self._block(value, bridge, reports)
            elif is_image_location(value):
                new[key] = ""
            else:
                new[key] = self._block(value, bridge, reports)
        return new if new != block else block

    def _image_of(self, block: dict[str, Any], kind: str, bridge: AnonymizerBridge) -> AnonymizedImage:
        if kind == "image_url" or (kind == "input_image" and block.get("image_url")):
            target = block.get("image_url")
            url = target.get("url") if isinstance(target, dict) else target
            return self._from_url(url, bridge)
        source = block.get("source")
        if isinstance(source, dict):  # Anthropic's format
            if source.get("type") == "base64":
                return bridge.anonymize(data=decode_base64_image(source.get("data") or ""))
            if source.get("type") == "url":
                return self._from_url(source.get("url"), bridge)
            raise InvalidImageError(f"image source of type {source.get('type')!r} cannot be anonymized")
        for key in ("base64", "data"):
            if block.get(key):
                value = block[key]
                data = value if isinstance(value, (bytes, bytearray)) else decode_base64_image(value)
                return bridge.anonymize(data=bytes(data))
        if block.get("url"):
            return self._from_url(block["url"], bridge)
        raise InvalidImageError("image block holds no data or URL this guard can see (a provider file id?)")

    @staticmethod
    def _from_url(url: Any, bridge: AnonymizerBridge) -> AnonymizedImage:
        if not isinstance(url, str) or not url:
            raise InvalidImageError("image block without a URL")
        if url[:5].lower() == "data:":
            return bridge.anonymize(data=decode_base64_image(url))
        return bridge.anonymize(url=url)

    @staticmethod
    def _rebuilt(block: dict[str, Any], kind: str, image: AnonymizedImage) -> dict[str, Any]:
        new = copy.deepcopy(block)
        if kind == "input_image":
            new.pop("file_id", None)
            new["image_url"] = image.data_uri
            return new
        if kind == "image_url":
            target = new.get("image_url")
            if isinstance(target, dict):
                target["url"] = image.data_uri
            else:
                new["image_url"] = image.data_uri
            return new
        if isinstance(new.get("source"), dict):
            new["source"] = {"type": "base64", "media_type": image.mimetype, "data": image.base64}
            return new
        for key in ("url", "file_id", "id", "base64", "data"):
            new.pop(key, None)
        if "source_type" in block:  # LangChain's v0 standard blocks
            new["source_type"] = "base64"
            new["data"] = image.base64
        else:
            new["base64"] = image.base64
        new["mime_type"] = image.mimetype
        return new
