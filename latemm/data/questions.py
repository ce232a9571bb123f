"""Questions from the formats people keep them in (CSV, JSON, JSON Lines, plain text) as the
queries Parquet file that ``latemm search`` reads: ``query_id`` and ``text``.

Used by ``latemm convert QUESTIONS.csv --out questions.parquet``. Imports pyarrow and the
standard library only.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from index_store.errors import InputError

SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".txt")
ID_KEYS = ("query_id", "qid", "id", "_id")
TEXT_KEYS = ("text", "question", "query")


def _pick(keys: list[str], wanted: tuple[str, ...]) -> str | None:
    lowered = {k.lower(): k for k in keys}
    return next((lowered[w] for w in wanted if w in lowered), None)


def _from_records(records: list[Any], source: Path) -> tuple[list[str], list[str]]:
    """(ids, texts) from a list of strings or of objects with a text key (and maybe an id)."""
    ids, texts = [], []
    for i, record in enumerate(records):
        where = f"{source}, record {i + 1}"
        if isinstance(record, str):
            ids.append(f"q{i + 1}")
            texts.append(record)
            continue
        if not isinstance(record, dict):
            raise InputError(f"{where}: expected a question string or an object, got {record!r}")
        keys = [str(k) for k in record]
        text_key = _pick(keys, TEXT_KEYS) or (keys[0] if len(keys) == 1 else None)
        if text_key is None:
            raise InputError(
                f"{where}: no question: name its key one of {', '.join(TEXT_KEYS)} (keys: "
                f"{', '.join(keys) or 'none'})"
            )
        id_key = _pick(keys, ID_KEYS)
        ids.append(str(record[id_key]) if id_key and record[id_key] is not None else f"q{i + 1}")
        texts.append(record[text_key])
    return ids, texts


def read_questions(source: str | Path) -> tuple[list[str], list[str]]:
    """(query ids, question texts) of a CSV/TSV file (a header row; columns ``query_id`` /
    ``qid`` / ``id`` and ``text`` / ``question`` / ``query``, or a single column of questions),
    a JSON file (a list of strings or objects, or an object ``{id: question}``), a JSON Lines
    file (one object per line) or a text file (one question per line). Rows without an id get
    ``q1``, ``q2``, ...; an empty question or a repeated id is an ``InputError`` naming it."""
    path = Path(source)
    if path.suffix.lower() not in SUFFIXES:
        raise InputError(f"{path}: questions must be {', '.join(SUFFIXES)}")
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the questions file {path}: {exc}") from exc
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        rows = list(csv.DictReader(raw.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
        ids, texts = _from_records(rows, path)
    elif suffix == ".txt":
        lines = [line.strip() for line in raw.splitlines() if line.strip()]
        ids, texts = [f"q{i + 1}" for i in range(len(lines))], lines
    else:
        try:
            if suffix == ".jsonl":
                payload: Any = [json.loads(line) for line in raw.splitlines() if line.strip()]
            else:
                payload = json.loads(raw)
        except ValueError as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from exc
        if isinstance(payload, dict):
            payload = [{"query_id": k, "text": v} for k, v in payload.items()]
        if not isinstance(payload, list):
            raise InputError(f"{path}: expected a list of questions or an object {{id: question}}")
        ids, texts = _from_records(payload, path)
    seen: set[str] = set()
    for i, (qid, text) in enumerate(zip(ids, texts, strict=True)):
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{path}, question {i + 1} (id {qid!r}): the question is empty")
        if qid in seen:
            raise InputError(f"{path}, question {i + 1}: query id {qid!r} is repeated")
        seen.add(qid)
    if not ids:
        raise InputError(f"{path} holds no questions")
    return ids, texts


def write_queries(source: str | Path, out: str | Path) -> int:
    """Write ``source``'s questions as a queries Parquet file; returns how many."""
    ids, texts = read_questions(source)
    pq.write_table(pa.table({"query_id": ids, "text": [t.strip() for t in texts]}), out)
    return len(ids)
