"""Hugging Face dataset folders read as they are.

``hf_dataset(path)``: a folder written by ``datasets``' ``save_to_disk`` (a ``Dataset``:
  ``state.json`` and ``data-*.arrow``; a ``DatasetDict``: ``dataset_dict.json`` and one such
  folder per split) or a dataset repository's Parquet shards (``data/*.parquet``, or
  ``<config>/<split>-*.parquet`` beside a ``README.md``) as one pyarrow dataset, so every
  command that reads a corpus or queries file takes such a folder directly (``latemm.data.io``'s
  ``open_dataset`` asks here first). ``save_to_disk``'s Arrow files are streams, memory-mapped,
  not copied.

ViDoRe v3's converter (``latemm.data.loaders.vidore_v3``) reads its parts through here.

Imports pyarrow only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from index_store.errors import InputError


def _arrow_stream(path: Path) -> pa.Table:
    """One ``save_to_disk`` Arrow file (IPC stream format), memory-mapped."""
    try:
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_stream(source).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path} is not a readable Arrow file of a saved dataset ({exc})") from exc


def _saved_dataset(folder: Path) -> pa.Table:
    """The rows of one ``save_to_disk`` ``Dataset`` folder, in its files' order."""
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        files = [folder / f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{folder / 'state.json'} does not list the dataset's Arrow files ({exc}); save the "
            "dataset again with save_to_disk"
        ) from exc
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"{folder}: saved dataset files missing: {', '.join(missing)}")
    tables = [_arrow_stream(f) for f in files]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _split_folders(folder: Path) -> list[Path]:
    """The split folders of a saved ``DatasetDict``, in ``dataset_dict.json``'s order."""
    try:
        splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(
            f"{folder / 'dataset_dict.json'} is not a saved DatasetDict ({exc})"
        ) from exc
    return [folder / s for s in splits]


def is_hf_dataset(path: str | Path) -> bool:
    """A ``save_to_disk`` folder or a dataset repository's Parquet shards."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    if (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file():
        return True
    return _repo_shards(folder) is not None


def _repo_shards(folder: Path) -> list[Path] | None:
    """A repository's Parquet shards: ``data/**/*.parquet``, or, beside a ``README.md`` (the
    dataset card), every ``*.parquet`` below the folder; None for a plain Parquet folder."""
    if (folder / "data").is_dir():
        shards = sorted((folder / "data").rglob("*.parquet"))
        if shards:
            return shards
    if (folder / "README.md").is_file():
        shards = sorted(
            p
            for p in folder.rglob("*.parquet")
            if not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts)
        )
        return shards or None
    return None


def hf_dataset(path: str | Path, *, split: str | None = None) -> ds.Dataset | None:
    """The rows of a Hugging Face dataset folder (see the module docstring) as a pyarrow
    dataset, or None when ``path`` is not one. A saved ``DatasetDict`` gives ``split`` (default:
    its only split; several splits need one named)."""
    folder = Path(path)
    if not is_hf_dataset(folder):
        return None
    if (folder / "dataset_dict.json").is_file():
        splits = _split_folders(folder)
        names = [s.name for s in splits]
        if split is None and len(splits) > 1:
            raise InputError(
                f"{folder} is a saved DatasetDict with splits {', '.join(names)}: point at one "
                f"of them ({folder / names[0]})"
            )
        chosen = [s for s in splits if split is None or s.name == split]
        if not chosen:
            raise InputError(f"{folder} has no split {split!r} (splits: {', '.join(names)})")
        return ds.dataset(_saved_dataset(chosen[0]))
    if (folder / "state.json").is_file():
        return ds.dataset(_saved_dataset(folder))
    shards = _repo_shards(folder) or []
    try:
        schema = pa.unify_schemas([pq.read_schema(s) for s in shards])
        return ds.dataset([str(s) for s in shards], schema=schema, format="parquet")
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise InputError(f"{folder}: its Parquet shards cannot be read together ({exc})") from exc
