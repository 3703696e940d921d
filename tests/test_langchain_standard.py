"""LangChain's own standard retriever tests, run against the wrapper."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core", reason="install the langchain extra")
pytest.importorskip("langchain_tests", reason="install langchain-tests")

from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import InMemoryVectorStore, VectorStoreRetriever
from langchain_tests.integration_tests import RetrieversIntegrationTests

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.integrations.langchain import FaceAnonymizerCompressor, FaceAnonymizingRetriever

_STORE = InMemoryVectorStore.from_texts(
    [f"document number {i} about photographs" for i in range(8)], DeterministicFakeEmbedding(size=32)
)


class StoreBackedRetriever(FaceAnonymizingRetriever):
    """The wrapper over an in-memory vector store, constructible with only ``k``."""

    def __init__(self, **kwargs):
        kwargs.setdefault("retriever", VectorStoreRetriever(vectorstore=_STORE))
        kwargs.setdefault(
            "anonymizer",
            FaceAnonymizerCompressor(engine=FaceAnonymizer(AnonymizerConfig(generator="none", rotations=(0,)))),
        )
        super().__init__(**kwargs)


class TestFaceAnonymizingRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return StoreBackedRetriever

    @property
    def retriever_query_example(self) -> str:
        return "photographs"
