"""How torch's OpenMP wait policy changes latemm's per-query costs on shared cores.

libgomp's threads spin while they wait for work (by default for a while, then sleep; with
``ACTIVE`` for good); on a 2-core machine that other processes also use, each parallel region of
a small op then waits for a scheduler slice. ``fde`` now sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user set one. This runs the same
measurements in child processes under each policy (one fresh process per operation, policy
and round, alternating policies, all in one run) and prints the ratio: a query's FDE, a small
and a large product, and torch's 2-D ``index_add_`` (which a query's FDE uses).
Calls are spaced by 5 ms, as single queries arrive with other work between them. The machine's
load average is recorded: the gap is a property of shared cores, and is small on idle ones.

Run: ``python -m experiments.bench_openmp [--rounds 5]``; writes ``results/bench_openmp.json``.
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

# libgomp's default when the variable is unset or empty: spin a while, then sleep. An empty value
# keeps fde's setdefault from choosing PASSIVE, so the child measures the default.
POLICIES = {"default": "", "ACTIVE": "ACTIVE", "PASSIVE": "PASSIVE"}


OPS = ("query_fde", "product_28x128x100", "product_263680x128x28", "index_add_2d_560x16")


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
    env = {**os.environ, "OMP_WAIT_POLICY": POLICIES[policy], "PYTHONPATH": str(REPO)}
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
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(measure(args.child))
        return
    load_before = os.getloadavg()
    times: dict[str, dict[str, list[float]]] = {p: {op: [] for op in OPS} for p in POLICIES}
    for _ in range(args.rounds):
        for op in OPS:
            for policy in POLICIES:
                times[policy][op].append(run_child(policy, op))
    ops = list(OPS)
    best = {p: {op: min(times[p][op]) for op in ops} for p in POLICIES}
    result: dict[str, Any] = {
        "rounds": args.rounds,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "best_ms": best,
        "all_ms": times,
        "default_over_passive": {op: best["default"][op] / best["PASSIVE"][op] for op in ops},
        "active_over_passive": {op: best["ACTIVE"][op] / best["PASSIVE"][op] for op in ops},
    }
    for op in ops:
        print(
            f"{op:24s} "
            + "  ".join(f"{p} {best[p][op]:8.3f} ms" for p in POLICIES)
            + f"  default/PASSIVE {result['default_over_passive'][op]:6.1f}x"
        )
    print(f"load average {load_before} -> {result['load_average_after']}")
    write_result("bench_openmp", result)


if __name__ == "__main__":
    main()
