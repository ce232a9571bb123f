"""Searching a collection: the retriever over one index (first stage, bounded exact MaxSim,
``retriever``), the reranker (``reranker``), and the phased search over fields and shards
(``field_parts``, ``field_search``).

Imports ``latemm.index`` and the layers below it; never ``runs``, ``api`` or ``cli``.
"""
