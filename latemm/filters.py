"""Metadata filters (``--where``): one SQL expression over an index's metadata columns, turned
into per-segment boolean masks of the documents it keeps.

The expression is a user's string, so it is checked twice. First it is parsed (DuckDB's own
parser, through ``json_serialize_sql``) and must be a single expression whose column references
are metadata columns and whose functions are scalar functions: no statements after ``;``, no
subqueries, no table functions (``read_csv``, ``read_text``), no window or aggregate functions.
Then it runs on a DuckDB connection with file and network access disabled, no extension
autoloading, and the configuration locked, with the metadata as its only table.

Imports ``duckdb`` (the ``filters`` extra), ``numpy``, ``pyarrow`` and ``index_store``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from index_store import Index
from index_store.errors import InputError, require

# Columns the metadata table adds to locate documents; not the user's to filter on.
RESERVED_COLUMNS = ("_segment", "_row")
# Expression node classes a filter may contain (DuckDB's parsed expression classes).
_ALLOWED_CLASSES = {
    "CONSTANT",
    "COLUMN_REF",
    "COMPARISON",
    "CONJUNCTION",
    "OPERATOR",
    "FUNCTION",
    "CAST",
    "CASE",
    "BETWEEN",
    "COLLATE",
    "TYPE",  # the target type of a CAST
}
# Scalar functions that read the process's environment or settings, or run SQL.
_DENIED_FUNCTIONS = {
    "getenv",
    "current_setting",
    "getvariable",
    "json_serialize_sql",
    "json_deserialize_sql",
    "json_execute_serialized_sql",
    "json_serialize_plan",
}
_PREFIX = "SELECT _segment, _row FROM meta WHERE "
_CONFIG = {
    "enable_external_access": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "lock_configuration": True,
}


def _connect() -> Any:
    duckdb = require("duckdb", "filters")
    return duckdb.connect(config=dict(_CONFIG))


def _strip_locations(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _strip_locations(v) for k, v in value.items() if not k.startswith("query_location")
        }
    if isinstance(value, list):
        return [_strip_locations(v) for v in value]
    return value


def _parse(con: Any, where: str) -> dict[str, Any]:
    """The parsed WHERE clause of ``SELECT _segment, _row FROM meta WHERE {where}``, after
    checking that the statement is exactly that query with one condition."""
    fix = 'a --where filter is one condition over the metadata columns, e.g. "year >= 2020"'
    try:
        statements = con.extract_statements(_PREFIX + where)
    except Exception as exc:  # noqa: BLE001 - duckdb's parser errors have several types
        # DuckDB's parser errors span lines (the query and a caret): one line here.
        reason = " ".join(str(exc).split())
        raise InputError(
            f"--where {where!r} is not a single SQL condition ({reason}); {fix}"
        ) from exc
    if len(statements) != 1:
        raise InputError(f"--where {where!r}: only one condition is allowed (no ';'); {fix}")
    parsed = json.loads(
        con.execute("SELECT json_serialize_sql(?)", [_PREFIX + where]).fetchone()[0]
    )
    if parsed.get("error"):
        raise InputError(
            f"--where {where!r} is not a single SQL condition ({parsed.get('error_message')}); {fix}"
        )
    statements = parsed["statements"]
    template = json.loads(
        con.execute("SELECT json_serialize_sql(?)", [_PREFIX + "TRUE"]).fetchone()[0]
    )["statements"][0]["node"]
    node = statements[0]["node"] if len(statements) == 1 else {}
    clause = node.get("where_clause")
    shape = _strip_locations({k: v for k, v in node.items() if k != "where_clause"})
    expected = _strip_locations({k: v for k, v in template.items() if k != "where_clause"})
    if clause is None or shape != expected:
        raise InputError(
            f"--where {where!r} changes the query around the condition (ORDER BY, GROUP BY, "
            f"LIMIT, UNION, ...); {fix}"
        )
    return dict(clause)


def _check(node: Any, where: str, columns: list[str], scalars: set[str]) -> None:
    """Walk the parsed expression: allowed node classes, known columns, scalar functions."""
    if isinstance(node, list):
        for item in node:
            _check(item, where, columns, scalars)
        return
    if not isinstance(node, dict):
        return
    if "subquery" in node or "from_table" in node or "node" in node:
        raise InputError(f"--where {where!r}: subqueries are not allowed in a filter")
    kind = node.get("class")
    if kind is not None and kind not in _ALLOWED_CLASSES:
        what = "subqueries are" if kind == "SUBQUERY" else f"{kind.lower()} expressions are"
        raise InputError(f"--where {where!r}: {what} not allowed in a filter")
    if kind == "COLUMN_REF":
        names = node.get("column_names") or []
        name = names[-1] if names else ""
        if len(names) > 2 or (len(names) == 2 and names[0] != "meta") or name not in columns:
            raise InputError(
                f"--where {where!r}: no metadata column {'.'.join(names)!r}. "
                f"Metadata columns: {', '.join(columns)}"
            )
    if kind == "FUNCTION":
        name = str(node.get("function_name", "")).lower()
        qualified = node.get("schema") or node.get("catalog")
        if (
            node.get("filter") is not None
            or node.get("distinct")
            or node.get("order_bys", {}).get("orders")
        ):
            raise InputError(f"--where {where!r}: aggregate options are not allowed in a filter")
        if not node.get("is_operator") and (
            qualified or name in _DENIED_FUNCTIONS or name not in scalars
        ):
            raise InputError(
                f"--where {where!r}: {name!r} is not a scalar function a filter may call "
                "(table functions such as read_csv, aggregates and settings are not allowed)"
            )
    for value in node.values():
        _check(value, where, columns, scalars)


def metadata_columns(index: Index) -> list[str]:
    """The columns a filter may name: the metadata columns plus ``doc_id``."""
    names = index.metadata().column_names
    return [n for n in names if n not in RESERVED_COLUMNS]


def filter_masks(index: Index, where: str) -> list[np.ndarray]:
    """Per segment of ``index``: a bool mask of the live rows whose metadata satisfies ``where``.

    Parameters
    ----------
    index
        An open index.
    where
        One SQL condition over the metadata columns (DuckDB syntax), e.g.
        ``"year >= 2020 AND source = 'esg'"``.

    Raises
    ------
    InputError
        If ``where`` is not a single condition over metadata columns with scalar functions, or
        cannot be evaluated (the message lists the metadata columns).
    """
    if not isinstance(where, str) or not where.strip():
        raise InputError(f"--where must be a non-empty SQL condition, got {where!r}")
    table: pa.Table = index.metadata()
    columns = [n for n in table.column_names if n not in RESERVED_COLUMNS]
    con = _connect()
    try:
        clause = _parse(con, where)
        scalars = {
            str(name).lower()
            for (name,) in con.execute(
                "SELECT DISTINCT function_name FROM duckdb_functions() "
                "WHERE function_type IN ('scalar', 'macro')"
            ).fetchall()
        }
        _check(clause, where, columns, scalars)
        con.register("meta", table)
        try:
            hits = con.execute(_PREFIX + where).fetchnumpy()
        except Exception as exc:  # noqa: BLE001 - duckdb raises many error types
            raise InputError(
                f"cannot apply --where {where!r}: {exc}. Metadata columns: {', '.join(columns)}"
            ) from exc
    finally:
        con.close()
    masks = []
    for s, seg in enumerate(index.segments):
        mask = np.zeros(seg.num_docs, dtype=bool)
        mask[np.asarray(hits["_row"])[np.asarray(hits["_segment"]) == s]] = True
        masks.append(mask & seg.live)
    return masks


# ------------------------------------------------------------------ conditions per query
# A queries file may carry a ``where`` column: per query, one condition of the kind ``--where``
# takes (null: no condition of its own). It is checked on its own, then joined to ``--where`` by
# AND, and applied before the first stage as ``--where`` is (``latemm.retriever.by_scope``).
WHERE_COLUMN = "where"


def check_condition(where: str) -> None:
    """Raise ``InputError`` unless ``where`` parses as one condition on its own (its columns
    and functions are checked against an index's metadata when it is applied)."""
    if not isinstance(where, str) or not where.strip():
        raise InputError(f"--where must be a non-empty SQL condition, got {where!r}")
    con = _connect()
    try:
        _parse(con, where)
    finally:
        con.close()


def conjoin(*conditions: str | None) -> str | None:
    """The conditions that are not None joined by AND (each checked on its own first, so that
    none can reach into another's parentheses); None if there are none."""
    present = [c for c in conditions if c is not None]
    if len(present) <= 1:
        return present[0] if present else None
    for condition in present:
        check_condition(condition)
    return " AND ".join(f"({c})" for c in present)


def query_conditions(table: pa.Table, where: str | None) -> str | list[str | None] | None:
    """The conditions a batch of a queries file is searched under: ``where`` alone when the
    file has no ``where`` column, else per query its own condition AND ``where``. An error
    names the query's position in ``table`` (``InputError.item``)."""
    if WHERE_COLUMN not in table.column_names:
        return where
    column = table.column(WHERE_COLUMN)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        if not pa.types.is_null(column.type):
            raise InputError(
                f"the {WHERE_COLUMN!r} column has type {column.type}; expected strings (one SQL "
                "condition per query, e.g. \"source = 'report.pdf'\"; null for none)"
            )
    out: list[str | None] = []
    checked: dict[str, str | None] = {}
    for i, own in enumerate(column.to_pylist()):
        if own is not None and own not in checked:
            try:
                checked[own] = conjoin(where, own) if where is not None else _checked(own)
            except InputError as exc:
                raise InputError(f"its {WHERE_COLUMN!r}: {exc}", item=i) from exc
        out.append(where if own is None else checked[own])
    return out


def _checked(where: str) -> str:
    check_condition(where)
    return where
