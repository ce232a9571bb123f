"""Shared fixtures: where the read-only evaluation data lives, and skips when it is absent.

Builders the tests call with their own sizes and seeds (``DIM``, ``write_corpus``,
``write_queries``, ``write_pages``, ``write_questions``, ``write_embedding_table``, ``read_run``)
are plain functions in ``tests/helpers.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$LATEMM_SHARED_DATA`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("LATEMM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared evaluation data not found at {path} (set LATEMM_SHARED_DATA)")
    return path
