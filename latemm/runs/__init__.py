"""Work over many queries: resumable batch search into run files (``jobs``), the same on a Ray
cluster (``distributed``: Ray Data to encode, actors to serve shards), evaluation
(``metrics``), fusion tuning (``tune``) and the HTML view of a run (``show``).

Imports ``latemm.retrieval`` and the layers below; the notebook API (``latemm.api``) and the
CLI (``latemm.cli``) sit above it.
"""
