"""How torch's OpenMP wait policy changes latemm's per-query costs on shared cores.

libgomp's threads spin while they wait for work (by default for a while, then sleep; with
``ACTIVE`` for good); on a 2-core machine that other processes also use, each parallel region of
a small op then waits for a scheduler slice. ``fde`` sets ``GOMP_SPINCOUNT=30000`` unless the
user set it or a policy (it set ``OMP_WAIT_POLICY=PASSIVE`` before; RESULTS.md has both runs).
This runs the same measurements in child processes under each setting (one fresh process per
operation, setting and round, alternating settings, all in one run): a query's FDE, a small and
a large product, and torch's 2-D ``index_add_`` (which a query's FDE uses).
Calls are spaced by 5 ms, as single queries arrive with other work between them. The machine's
load average is recorded: the gap is a property of shared cores, and is small on idle ones.

Besides the three policies it measures libgomp's spin count (``GOMP_SPINCOUNT``, policy unset:
spin that many rounds, then sleep), and the int8 rescoring pass of one query over 320 pages,
which runs ~100 parallel regions back to back and pays a wake-up for each under PASSIVE.
``--busy N`` runs N busy-looping processes for the whole measurement, so that "shared cores"
is a controlled condition rather than whatever else the machine runs.

Run: ``python -m experiments.bench_openmp [--rounds 5] [--busy N] [--name NAME]``; writes
``results/NAME.json`` (``bench_openmp`` by default).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

from experiments.common import REPO, write_result

# The environment of each setting. libgomp's default when the policy is unset or empty: spin a
# while, then sleep. An empty value keeps fde's setdefault from choosing a policy, so the child
# measures the default (libgomp warns about the empty value on stderr).
POLICIES: dict[str, dict[str, str]] = {
    "default": {"OMP_WAIT_POLICY": ""},
    "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin 10k": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "10000"},
    "spin 30k": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "30000"},
}


OPS = (
    "query_fde",
    "product_28x128x100",
    "product_263680x128x28",
    "index_add_2d_560x16",
    "int8_pass_320_pages",
)


def operation(name: str) -> Any:
    """The callable measured as ``name`` (inputs built here, outside the timing)."""
    import torch

    from fde import encode_queries
    from index_store import default_fde_config

    rng = np.random.default_rng(0)
    query = rng.standard_normal((28, 128)).astype(np.float32)
    if name == "query_fde":
        config = default_fde_config(128)
        return lambda: encode_queries([query], config)
    if name == "product_28x128x100":
        small = torch.from_numpy(rng.standard_normal((128, 100)).astype(np.float32))
        return lambda: torch.from_numpy(query) @ small
    if name == "product_263680x128x28":
        pages = torch.from_numpy(rng.standard_normal((256 * 1030, 128)).astype(np.float32))
        return lambda: pages @ torch.from_numpy(query).T
    if name == "int8_pass_320_pages":
        from latemm.ranking.scoring import maxsim_half

        codes = rng.integers(-127, 128, (320 * 1030, 128), dtype=np.int8)
        scales = rng.uniform(0.001, 0.003, 320 * 1030).astype(np.float32)
        offsets = np.arange(321, dtype=np.int64) * 1030
        q = query[:24] / np.linalg.norm(query[:24], axis=1, keepdims=True)
        bounds = np.array([0, 24])
        return lambda: maxsim_half(q, bounds, codes, offsets, scales=scales)
    target, rows, cells = torch.zeros(640, 16), torch.randn(560, 16), torch.randint(0, 640, (560,))
    return lambda: target.index_add_(0, cells, rows)


def measure(name: str, repeats: int = 15, gap_s: float = 0.005) -> float:
    """Median ms of ``name`` in this process (the policy is fixed at torch's import)."""
    op = operation(name)
    op()
    times = []
    for _ in range(repeats):
        time.sleep(gap_s)
        start = time.perf_counter()
        op()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def run_child(policy: str, name: str) -> float:
    env = {**os.environ, **POLICIES[policy], "PYTHONPATH": str(REPO)}
    if "GOMP_SPINCOUNT" not in POLICIES[policy]:
        env.pop("GOMP_SPINCOUNT", None)
    out = subprocess.run(
        [sys.executable, "-m", "experiments.bench_openmp", "--child", name],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per policy")
    parser.add_argument("--busy", type=int, default=0, help="busy-looping processes beside it")
    parser.add_argument("--name", default="bench_openmp", help="results file name")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(measure(args.child))
        return
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    load_before = os.getloadavg()
    times: dict[str, dict[str, list[float]]] = {p: {op: [] for op in OPS} for p in POLICIES}
    try:
        for _ in range(args.rounds):
            for op in OPS:
                for policy in POLICIES:
                    times[policy][op].append(run_child(policy, op))
    finally:
        for process in busy:
            process.kill()
    ops = list(OPS)
    best = {p: {op: min(times[p][op]) for op in ops} for p in POLICIES}
    result: dict[str, Any] = {
        "rounds": args.rounds,
        "busy_processes": args.busy,
        "settings": POLICIES,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "best_ms": best,
        "all_ms": times,
        "over_passive": {
            p: {op: best[p][op] / best["PASSIVE"][op] for op in ops} for p in POLICIES
        },
    }
    for op in ops:
        print(f"{op:24s} " + "  ".join(f"{p} {best[p][op]:8.3f}" for p in POLICIES) + " ms")
    print(f"load average {load_before} -> {result['load_average_after']}")
    write_result(args.name, result)


if __name__ == "__main__":
    main()
