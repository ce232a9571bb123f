"""latemm: late-interaction retrieval over visual documents.

Encoders, scoring, the retriever, the reranker and the CLI live here; the FDE math is in ``fde``
and the on-disk index in ``index_store``. The notebook API (``build_index``, ``search``,
``evaluate``, ``info``, ``delete``, ``compact``, ``verify``) imports its heavy parts lazily.
"""

from latemm.api import build_index, compact, delete, evaluate, info, search, verify
from latemm.encoders import minilm_path
from latemm.retriever import Retriever, SearchResult
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
