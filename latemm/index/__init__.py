"""The collection on disk, over ``index_store``: building an index from a corpus
(``pipeline``), named fields over one page store (``fields``, ``pagestore``, ``bm25``,
``field_maintenance``), shards (``sharded``, ``field_shards``), and ``collection``, the one
place that tells the kinds apart and gives each the same verbs.

Imports ``latemm.data``, ``latemm.encoders`` and ``latemm.ranking``; never the layers above
(``retrieval``, ``runs``, ``api``, ``cli``).
"""
