"""Importing fde (and so index_store and latemm) shortens how long torch's OpenMP threads spin
while they wait, unless the user chose otherwise: long-spinning waiters made small ops cost a
scheduler slice on shared cores, and sleeping ones a wake-up per parallel region."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, "policy=None spin=30000"),
        ({"OMP_WAIT_POLICY": "PASSIVE"}, "policy=PASSIVE spin=None"),
        ({"GOMP_SPINCOUNT": "500"}, "policy=None spin=500"),
    ],
)
def test_import_sets_a_short_spin_unless_the_user_set_a_wait(
    given: dict[str, str], expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(given)
    # -S: no site hooks (.pth files) run, so only the packages can set it; the parent's path
    # is handed over instead.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, sys.path)])
    code = (
        "import latemm, os, torch; e = os.environ; "
        "print(f\"policy={e.get('OMP_WAIT_POLICY')} spin={e.get('GOMP_SPINCOUNT')}\")"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == expected
