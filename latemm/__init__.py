"""latemm: late-interaction retrieval over visual documents.

The FDE math is in ``fde`` and the on-disk index format in ``index_store``. The layers here, each
importing only those before it (``tests/test_layers.py`` checks): ``data`` (files in and out,
ingest, OCR), ``encoders`` and ``ranking`` (MaxSim, fusion, filters, pooling); ``index`` (the
collection on disk); ``retrieval`` (the retriever, the reranker, the phased search over fields
and shards); ``runs`` (batch runs, Ray, metrics, tuning, show); then ``api`` (the notebook API:
``build_index``, ``search``, ``evaluate``, ``info``, ``delete``, ``compact``, ``verify``, which
imports its heavy parts lazily), ``quickstart``, ``mteb`` and ``cli``.
"""

from latemm.api import build_index, compact, delete, evaluate, info, search, verify
from latemm.encoders import minilm_path
from latemm.retrieval.retriever import Retriever, SearchResult
from latemm.version import __version__

__all__ = [
    "__version__",
    "Retriever",
    "SearchResult",
    "build_index",
    "compact",
    "delete",
    "evaluate",
    "info",
    "minilm_path",
    "search",
    "verify",
]
