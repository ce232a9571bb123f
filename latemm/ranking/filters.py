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
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from index_store import Index
from index_store.errors import InputError, require
from index_store.store import CONTENT_COLUMNS

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


def _check(
    node: Any, where: str, columns: list[str], scalars: set[str], content: Sequence[str] = ()
) -> None:
    """Walk the parsed expression: allowed node classes, known columns (metadata ``columns``
    or page ``content`` columns), scalar functions."""
    if isinstance(node, list):
        for item in node:
            _check(item, where, columns, scalars, content)
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
        known = name in columns or name in content
        if len(names) > 2 or (len(names) == 2 and names[0] != "meta") or not known:
            raise InputError(
                f"--where {where!r}: no metadata column {'.'.join(names)!r}. "
                f"Metadata columns: {', '.join(columns)}"
                + (f"; page content columns: {', '.join(content)}" if content else "")
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
        _check(value, where, columns, scalars, content)


def metadata_columns(index: Index) -> list[str]:
    """The columns a filter may name: the metadata columns plus ``doc_id``."""
    names = index.metadata().column_names
    return [n for n in names if n not in RESERVED_COLUMNS]


def named_columns(node: Any) -> set[str]:
    """The column names a parsed expression refers to."""
    if isinstance(node, list):
        return set().union(*(named_columns(item) for item in node)) if node else set()
    if not isinstance(node, dict):
        return set()
    out: set[str] = set()
    if node.get("class") == "COLUMN_REF" and node.get("column_names"):
        out.add(str(node["column_names"][-1]))
    for value in node.values():
        out |= named_columns(value)
    return out


# Reads the page content columns a condition names, one row per row of the metadata table:
# (column names, the metadata table) -> a table with those columns.
ContentReader = Callable[[list[str], pa.Table], pa.Table]


def matching_rows(
    table: pa.Table,
    where: str,
    *,
    content: Sequence[str] = (),
    read_content: ContentReader | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``_segment`` and ``_row`` of the rows of ``table`` (metadata with ``_segment`` and
    ``_row`` columns) that satisfy ``where``. ``content``: page content columns (text, image,
    ...) a condition may also name; only those it names are read, by ``read_content``, and
    only after the condition has been checked."""
    if not isinstance(where, str) or not where.strip():
        raise InputError(f"--where must be a non-empty SQL condition, got {where!r}")
    columns = [n for n in table.column_names if n not in RESERVED_COLUMNS]
    extra = [c for c in content if c not in columns]
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
        _check(clause, where, columns, scalars, extra)
        wanted = [c for c in extra if c in named_columns(clause)]
        if wanted and read_content is not None:
            read = read_content(wanted, table)
            for name in wanted:
                table = table.append_column(name, read.column(name))
        con.register("meta", table)
        try:
            hits = con.execute(_PREFIX + where).fetchnumpy()
        except Exception as exc:  # noqa: BLE001 - duckdb raises many error types
            listed = ", ".join(columns) + (
                f"; page content columns: {', '.join(extra)}" if extra else ""
            )
            raise InputError(
                f"cannot apply --where {where!r}: {exc}. Metadata columns: {listed}"
            ) from exc
    finally:
        con.close()
    return np.asarray(hits["_segment"]), np.asarray(hits["_row"])


def filter_masks(
    index: Index,
    where: str,
    *,
    content: Sequence[str] = (),
    read_content: ContentReader | None = None,
) -> list[np.ndarray]:
    """Per segment of ``index``: a bool mask of the live rows whose metadata satisfies ``where``.

    Parameters
    ----------
    index
        An open index.
    where
        One SQL condition over the metadata columns (DuckDB syntax), e.g.
        ``"year >= 2020 AND source = 'esg'"``. It may also name the page content columns
        (``text``, ``image``) the index holds, or those ``content`` names (a page store's,
        read by ``read_content``): only the columns it names are read.

    Raises
    ------
    InputError
        If ``where`` is not a single condition over metadata columns with scalar functions, or
        cannot be evaluated (the message lists the metadata columns).
    """
    table: pa.Table = index.metadata()
    columns = [n for n in table.column_names if n not in RESERVED_COLUMNS]
    own = [
        c
        for c in CONTENT_COLUMNS
        if c not in columns and any(c in seg.schema.names for seg in index.segments)
    ]
    extra = [c for c in content if c not in columns and c not in own]

    def read(names: list[str], meta: pa.Table) -> pa.Table:
        mine = [c for c in names if c in own]
        out = index.metadata(columns=mine) if mine else meta.select([])
        got = {c: out.column(c) if c in out.column_names else None for c in mine}
        others = [c for c in names if c not in own]
        if others and read_content is not None:
            read_others = read_content(others, meta)
            got.update({c: read_others.column(c) for c in others})
        return pa.table(
            {c: got[c] if got[c] is not None else pa.nulls(meta.num_rows) for c in names}
        )

    segments, rows = matching_rows(table, where, content=own + extra, read_content=read)
    masks = []
    for s, seg in enumerate(index.segments):
        mask = np.zeros(seg.num_docs, dtype=bool)
        mask[rows[segments == s]] = True
        masks.append(mask & seg.live)
    return masks


# ------------------------------------------------------------------ conditions per query
# A queries file may carry a ``where`` column: per query, one condition of the kind ``--where``
# takes (null: no condition of its own). It is checked on its own, then joined to ``--where`` by
# AND, and applied before the first stage as ``--where`` is
# (``latemm.retrieval.retriever.by_scope``).
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
