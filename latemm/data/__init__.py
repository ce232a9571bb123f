"""Files in and out: corpora and queries (Parquet, CSV, JSON, Hugging Face dataset folders),
runs and qrels (``io``, ``loaders``, ``questions``, ``hf_datasets``), PDFs and page images read
into pages with OCR where a page has no text layer (``ingest``, ``ocr``), and the MMLongBench-Doc
questions (``mmlongbench``).

The bottom layer with ``latemm.encoders`` and ``latemm.ranking``: it imports neither, nor
anything above it (``tests/test_layers.py`` checks the order of every layer).
"""
