"""latemm: late-interaction retrieval over visual documents.

Encoders, scoring, the retriever, the reranker and the CLI live here; the FDE math is in ``fde``
and the on-disk index in ``index_store``.
"""

__version__ = "0.1.0"
