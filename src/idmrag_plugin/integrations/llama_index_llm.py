"""The model boundary for LlamaIndex: an LLM wrapper that anonymizes every image it is sent.

Whatever path an image took (a postprocessor that did not run, ``image_query``, a user's
upload, a tool's output), it reaches the model only through ``chat``/``complete`` and their
stream and async forms. The wrapper rewrites each message before the wrapped model sees
it::

    llm = FaceAnonymizingLLM(llm=OpenAI(model="gpt-4o-mini"))

* every ``ImageBlock`` (bytes, path or URL; URLs fetched under the same SSRF policy as
  the integrations) becomes an ``ImageBlock`` of the anonymized bytes, or, when it cannot
  be anonymized, a text block saying it was withheld (``on_failure="raise"`` raises);
* ``VideoBlock`` and ``AudioBlock`` cannot be anonymized and are withheld by default;
* a ``DocumentBlock`` whose MIME type is an image, or whose bytes are one whatever type it
  declares, is treated as an image; a plain-text one passes, the images embedded in it
  anonymized; any other (a PDF, an office file, one only a URL names) can hold photos the
  engine cannot reach and is withheld by default;
* legacy ``image_documents=[ImageNode, ...]`` arguments are anonymized like retrieved nodes.

The per-image reports go to :class:`FaceAnonymizationEvent` handlers and the log, never
into the messages. The wrapper's own methods are not instrumented: their arguments are
the originals, and span handlers record arguments.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Sequence
from typing import Any

try:
    from llama_index.core.base.llms.types import (
        AudioBlock,
        ChatMessage,
        ChatResponse,
        ChatResponseAsyncGen,
        ChatResponseGen,
        CompletionResponse,
        CompletionResponseAsyncGen,
        CompletionResponseGen,
        DocumentBlock,
        ImageBlock,
        LLMMetadata,
        TextBlock,
        VideoBlock,
    )
    from llama_index.core.bridge.pydantic import BaseModel, Field, PrivateAttr
    from llama_index.core.llms.llm import LLM
    from llama_index.core.schema import BaseNode
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the LlamaIndex integration needs llama-index-core: pip install 'idmrag-plugin[llama-index]'"
    ) from exc

from idmrag_plugin.errors import IdmragError, ImageWithheldError, InvalidImageError
from idmrag_plugin.integrations._common import (
    DOCUMENT_WITHHELD,
    AnonymizedImage,
    anonymize_embedded_images,
    anonymize_inline_images,
    carries_images,
    decode_base64_image,
    document_text,
    drop_locations,
    embeds_images,
    is_image_location,
    sniff_image,
)
from idmrag_plugin.integrations.llama_index import (
    FaceAnonymizationEvent,
    FaceAnonymizerPostprocessor,
    dispatcher,
)
from idmrag_plugin.pipeline import FaceAnonymizer

logger = logging.getLogger(__name__)


def _carries_images(value: Any) -> bool:
    return isinstance(value, (dict, list, str, bytes)) and carries_images(value)


def _withheld(kind: str, reason: str) -> TextBlock:
    return TextBlock(text=f"[{kind} withheld by idmrag-plugin: {reason}]")


class FaceAnonymizingLLM(LLM):
    """Wrap any LlamaIndex LLM or multimodal LLM: every image it is sent is anonymized first."""

    llm: Any = Field(description="The wrapped LLM.")
    anonymizer: FaceAnonymizerPostprocessor = Field(
        default_factory=FaceAnonymizerPostprocessor,
        description="Holds the engine and the URL policy (the same settings as the postprocessor).",
    )
    withhold_video: bool = Field(default=True, description="Replace video blocks by a note (they cannot be anonymized).")
    withhold_audio: bool = Field(default=True, description="Replace audio blocks by a note (voices identify people too).")
    withhold_documents: bool = Field(
        default=True,
        description="Replace document blocks that are neither images nor plain text (PDFs, office files, documents "
                    "only a URL names) by a note: they can hold photos this engine cannot anonymize.",
    )
    _engine_override: FaceAnonymizer | None = PrivateAttr(default=None)

    def __init__(self, llm: Any, engine: FaceAnonymizer | None = None, **kwargs: Any) -> None:
        if engine is not None and "anonymizer" not in kwargs:
            kwargs["anonymizer"] = FaceAnonymizerPostprocessor(engine=engine)
        super().__init__(llm=llm, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "FaceAnonymizingLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return self.llm.metadata

    # ------------------------------------------------------------------ rewriting
    def _anonymize_block(self, block: Any) -> Any:
        if isinstance(block, VideoBlock) and self.withhold_video:
            return _withheld("video", "video cannot be anonymized")
        if isinstance(block, AudioBlock) and self.withhold_audio:
            return _withheld("audio", "audio cannot be anonymized")
        if isinstance(block, TextBlock) and embeds_images(block.text):  # Markdown or HTML images, inline or linked
            return TextBlock(text=self._anonymize_embedded(block.text))
        if isinstance(block, DocumentBlock):
            return self._anonymize_document(block)
        if isinstance(block, (TextBlock, AudioBlock, VideoBlock)):
            return block
        if not isinstance(block, ImageBlock):
            return self._anonymize_container(block)
        return self._anonymized_image_block(block)

    def _anonymize_document(self, block: Any) -> Any:
        """A ``DocumentBlock``: an image (by its declared type or its bytes) anonymized as one;
        plain text passed on with its embedded images anonymized; any other document withheld
        unless ``withhold_documents`` is off."""
        raw: bytes | None = None
        if block.data is not None or block.path is not None:
            try:
                raw = block.resolve_document().read()
            except (ValueError, OSError) as exc:
                return self._withheld_document(InvalidImageError(f"unreadable document block: {exc}"))
        if str(block.document_mimetype or "").startswith("image/") or (raw is not None and sniff_image(raw)):
            return self._anonymized_image_block(block)
        text = None if raw is None else document_text(raw)
        if text is not None:
            if not embeds_images(text):
                return block
            return DocumentBlock(data=self._anonymize_embedded(text).encode("utf-8"),
                                 document_mimetype=block.document_mimetype, title=block.title)
        if not self.withhold_documents:
            return block
        return self._withheld_document(ImageWithheldError(DOCUMENT_WITHHELD))

    def _withheld_document(self, exc: IdmragError) -> TextBlock:
        bridge = self.anonymizer._bridge
        reason = bridge.reason(exc)
        dispatcher.event(FaceAnonymizationEvent(node_id="llm-message", status="withheld", error=reason))
        bridge.withhold(exc, "document sent to the model")
        return _withheld("document", reason)

    def _anonymized_image_block(self, block: Any) -> Any:
        """An ``ImageBlock`` of ``block``'s image anonymized, or a note that it was withheld."""
        bridge = self.anonymizer._bridge
        try:
            image = self._anonymize_image(block)
        except IdmragError as exc:
            reason = bridge.reason(exc)
            dispatcher.event(FaceAnonymizationEvent(node_id="llm-message", status="withheld", error=reason))
            bridge.withhold(exc, "image sent to the model")
            return _withheld("image", reason)
        dispatcher.event(FaceAnonymizationEvent(node_id="llm-message", status=str(image.report["status"]), report=image.report))
        return ImageBlock(image=image.data, image_mimetype=image.mimetype, detail=getattr(block, "detail", None))

    def _anonymize_container(self, block: Any) -> Any:
        """A block that holds other blocks (``CitableBlock``'s content, ``CitationBlock``'s
        cited content, and whatever later releases add) with those anonymized, its image
        paths and URLs (a citation's ``source``) blanked and images in its other fields (a
        tool call's arguments) anonymized in kind."""
        if not isinstance(block, BaseModel):
            return block
        updates: dict[str, Any] = {}
        for name in type(block).model_fields:
            value = getattr(block, name)
            if isinstance(value, BaseModel):
                new = self._anonymize_block(value)
            elif isinstance(value, list) and any(isinstance(v, BaseModel) for v in value):
                new = [self._anonymize_block(v) for v in value]
            elif is_image_location(value):
                new = ""
            elif _carries_images(value):
                new = self._anonymize_value(value)
            else:
                continue
            updates[name] = new
        return block.model_copy(update=updates) if updates else block

    def _anonymize_value(self, value: Any) -> Any:
        bridge = self.anonymizer._bridge
        reports: list[dict[str, Any]] = []
        try:
            return drop_locations(anonymize_inline_images(value, bridge.anonymize, reports), (), [])
        except IdmragError as exc:
            bridge.withhold(exc, "image sent to the model")
            return None if not isinstance(value, str) else _withheld("image", bridge.reason(exc)).text

    def _anonymize_embedded(self, text: str) -> str:
        bridge = self.anonymizer._bridge
        reports: list[dict[str, Any]] = []

        def withheld(exc: IdmragError) -> str:
            reason = bridge.reason(exc)
            dispatcher.event(FaceAnonymizationEvent(node_id="llm-message", status="withheld", error=reason))
            bridge.withhold(exc, "image sent to the model")
            return _withheld("image", reason).text

        text = anonymize_embedded_images(text, bridge.anonymize, reports, on_error=withheld)
        for report in reports:
            if report.get("status") != "withheld":
                dispatcher.event(FaceAnonymizationEvent(node_id="llm-message", status=str(report["status"]), report=report))
        return text

    def _anonymize_image(self, block: Any) -> AnonymizedImage:
        bridge = self.anonymizer._bridge
        data = getattr(block, "image", None) if isinstance(block, ImageBlock) else getattr(block, "data", None)
        path, url = block.path, block.url
        if data is not None:
            try:  # ImageBlock keeps bytes base64-encoded once validated
                raw = block.resolve_image().read() if isinstance(block, ImageBlock) else block.resolve_document().read()
            except (ValueError, OSError) as exc:
                raise InvalidImageError(f"unreadable image block: {exc}") from exc
            return bridge.anonymize(data=raw)
        if path is not None:
            return bridge.anonymize(path=path)
        if url is not None:
            text = str(url)
            if text.startswith("data:"):
                return bridge.anonymize(data=decode_base64_image(text))
            return bridge.anonymize(url=text)
        raise InvalidImageError("image block without data, path or URL")

    def _safe_messages(self, messages: Sequence[ChatMessage]) -> list[ChatMessage]:
        safe = []
        for message in messages:
            update: dict[str, Any] = {"blocks": [self._anonymize_block(b) for b in message.blocks]}
            if message.additional_kwargs and carries_images(message.additional_kwargs):
                # the adapters send these too (OpenAI's tool calls, their arguments)
                update["additional_kwargs"] = self._anonymize_value(dict(message.additional_kwargs)) or {}
            safe.append(message.model_copy(update=update))
        return safe

    def _safe_prompt(self, prompt: str) -> str:
        """A completion prompt with the images embedded in it anonymized (a prompt template
        filled with a data URI or pasted base64 reaches the model as it is otherwise)."""
        return self._anonymize_embedded(prompt) if isinstance(prompt, str) and embeds_images(prompt) else prompt

    def _safe_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        # other keyword arguments an adapter forwards (an ``images=[...]`` list, say)
        kwargs = {key: self._anonymize_value(value) if key != "image_documents" and _carries_images(value) else value
                  for key, value in kwargs.items()}
        documents = kwargs.get("image_documents")
        if not documents:
            return kwargs
        safe: list[Any] = []
        for document in documents:
            if isinstance(document, BaseNode):
                out = self.anonymizer._anonymize_node(document)
                if out is not None:
                    safe.append(out)
            else:
                safe.append(self._anonymize_block(document))
        return {**kwargs, "image_documents": safe}

    # ------------------------------------------------------------------ the LLM interface
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self.llm.chat(self._safe_messages(messages), **self._safe_kwargs(kwargs))

    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self.llm.stream_chat(self._safe_messages(messages), **self._safe_kwargs(kwargs))

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self.llm.complete(self._safe_prompt(prompt), formatted=formatted, **self._safe_kwargs(kwargs))

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self.llm.stream_complete(self._safe_prompt(prompt), formatted=formatted, **self._safe_kwargs(kwargs))

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        safe = await asyncio.to_thread(self._safe_messages, messages)
        return await self.llm.achat(safe, **await asyncio.to_thread(self._safe_kwargs, kwargs))

    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        safe = await asyncio.to_thread(self._safe_messages, messages)
        return await self.llm.astream_chat(safe, **await asyncio.to_thread(self._safe_kwargs, kwargs))

    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        safe = await asyncio.to_thread(self._safe_kwargs, kwargs)
        prompt = await asyncio.to_thread(self._safe_prompt, prompt)
        return await self.llm.acomplete(prompt, formatted=formatted, **safe)

    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        safe = await asyncio.to_thread(self._safe_kwargs, kwargs)
        prompt = await asyncio.to_thread(self._safe_prompt, prompt)
        return await self.llm.astream_complete(prompt, formatted=formatted, **safe)


# LlamaIndex wraps every implementation of an abstract LLM method in a span whose handlers
# receive the call's arguments: here, the original images. The wrapped model's own spans
# see the anonymized ones.
for _name in ("chat", "stream_chat", "complete", "stream_complete", "achat", "astream_chat", "acomplete",
              "astream_complete"):
    setattr(FaceAnonymizingLLM, _name, inspect.unwrap(FaceAnonymizingLLM.__dict__[_name]))
