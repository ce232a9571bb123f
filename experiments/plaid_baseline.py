"""fast-plaid (LightOn's PLAID) as a baseline, run from its own virtual environment.

fast-plaid pins another torch than latemm (1.7.0.2110 wants torch 2.11 and CUDA wheels), so it
never enters the project's environment: ``ensure_venv`` uses the python named by
``$LATEMM_PLAID_PYTHON`` (e.g. ``/work/venv-plaid/bin/python`` after ``python3 -m venv
/work/venv-plaid && /work/venv-plaid/bin/pip install fast-plaid``), or creates
``experiments/cache/fastplaid-venv`` with it, and ``run_fastplaid`` hands the corpus over as
.npy files to a child process that builds one index per ``builds`` entry (``FastPlaid.create``
keyword arguments, e.g. ``{"nbits": 2}``), measures its bytes on disk, searches, and prints JSON.
Run directly, this module is that child (it imports numpy, torch and fast_plaid only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments.common import CACHE, REPO

VENV = CACHE / "fastplaid-venv"
PACKAGE = "fast-plaid==1.7.0.2110"


def ensure_venv() -> Path | None:
    """The venv's python (``$LATEMM_PLAID_PYTHON`` if set), creating it on first use; None if it
    cannot be built here."""
    named = os.environ.get("LATEMM_PLAID_PYTHON")
    if named:
        ok = subprocess.run([named, "-c", "import fast_plaid"], capture_output=True).returncode
        return Path(named) if ok == 0 else None
    python = VENV / "bin" / "python"
    if (
        python.is_file()
        and subprocess.run([python, "-c", "import fast_plaid"], capture_output=True).returncode == 0
    ):
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", PACKAGE], check=True)
    except subprocess.CalledProcessError:
        return None
    return python


def run_fastplaid(
    work: Path,
    doc_vectors: np.ndarray | None,
    doc_offsets: np.ndarray,
    query_vectors: np.ndarray,
    query_offsets: np.ndarray,
    *,
    top_k: int = 10,
    settings: list[dict[str, int]],
    builds: list[dict[str, int]] | None = None,
    threads: int = 2,
    timeout_s: float = 3600.0,
) -> dict[str, Any] | None:
    """fast-plaid's results: ``{"builds": [{"create", "build_s", "index_bytes", "runs"}]}`` (and
    the first build's ``build_s`` and ``runs`` at the top level), each run's ``top`` the row
    numbers of its documents; ``{"error": ...}`` if the child failed; None without fast-plaid.
    """
    python = ensure_venv()
    if python is None:
        return None
    work.mkdir(parents=True, exist_ok=True)
    if doc_vectors is not None:  # else the caller already wrote work/doc_vectors.npy
        np.save(work / "doc_vectors.npy", doc_vectors)
    np.save(work / "doc_offsets.npy", doc_offsets)
    np.save(work / "query_vectors.npy", query_vectors.astype(np.float32))
    np.save(work / "query_offsets.npy", query_offsets.astype(np.int64))
    try:
        out = subprocess.run(
            [
                python,
                "-m",
                "experiments.plaid_baseline",
                str(work),
                str(top_k),
                json.dumps(settings),
                str(threads),
                json.dumps(builds or [{}]),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"fast-plaid did not finish within {timeout_s:.0f} s"}
    if out.returncode != 0:  # a negative code: killed by that signal (-9: e.g. the OOM killer)
        return {"error": f"exit code {out.returncode}: {out.stderr[-2000:]}"}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _child(
    work: Path,
    top_k: int,
    settings: list[dict[str, int]],
    threads: int,
    builds: list[dict[str, int]],
) -> None:
    import shutil

    import torch
    from fast_plaid import search

    torch.set_num_threads(threads)
    vectors = np.load(work / "doc_vectors.npy", mmap_mode="r")
    offsets = np.load(work / "doc_offsets.npy")
    q_vectors = torch.from_numpy(np.load(work / "query_vectors.npy"))
    q_offsets = np.load(work / "query_offsets.npy")
    queries = [q_vectors[q_offsets[i] : q_offsets[i + 1]] for i in range(q_offsets.size - 1)]
    docs = [
        torch.from_numpy(np.array(vectors[offsets[i] : offsets[i + 1]], dtype=np.float16))
        for i in range(offsets.size - 1)
    ]
    out = []
    for build in builds:
        index_dir = work / "plaid-index"
        shutil.rmtree(index_dir, ignore_errors=True)
        plaid = search.FastPlaid(index=str(index_dir), device="cpu")
        start = time.perf_counter()
        plaid.create(documents_embeddings=docs, **build)
        seconds = time.perf_counter() - start
        size = sum(f.stat().st_size for f in index_dir.rglob("*") if f.is_file())
        out.append(
            {
                "create": build,
                "build_s": seconds,
                "index_bytes": size,
                "runs": [_runs(plaid, queries, top_k, setting) for setting in settings],
            }
        )
        shutil.rmtree(index_dir, ignore_errors=True)
    print(json.dumps({"build_s": out[0]["build_s"], "runs": out[0]["runs"], "builds": out}))


def _runs(plaid: Any, queries: list[Any], top_k: int, setting: dict[str, int]) -> dict[str, Any]:
    plaid.search(queries_embeddings=queries[:1], top_k=top_k, show_progress=False, **setting)
    latencies = []
    for q in range(min(len(queries), 20)):
        t0 = time.perf_counter()
        plaid.search(
            queries_embeddings=queries[q : q + 1], top_k=top_k, show_progress=False, **setting
        )
        latencies.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    results = plaid.search(queries_embeddings=queries, top_k=top_k, show_progress=False, **setting)
    batch = time.perf_counter() - t0
    return {
        "setting": setting,
        "latency_s_median": float(np.median(latencies)),
        "batch_queries_per_s": len(queries) / batch,
        "top": [[int(d) for d, _ in r] for r in results],
    }


if __name__ == "__main__":
    _child(
        Path(sys.argv[1]),
        int(sys.argv[2]),
        json.loads(sys.argv[3]),
        int(sys.argv[4]),
        json.loads(sys.argv[5]) if len(sys.argv) > 5 else [{}],
    )
