"""The arithmetic of a ranking, on arrays and never on disk: exact MaxSim and its bounds
(``scoring``), fusing ranked lists of several fields (``fusion``), metadata filters
(``filters``) and token pooling (``pooling``).

The bottom layer with ``latemm.data`` and ``latemm.encoders``: it imports neither, nor anything
above it.
"""
