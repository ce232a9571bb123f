"""Importing fde (and so index_store and latemm) makes torch's OpenMP threads sleep while they
wait, unless the user chose otherwise: spinning waiters made small ops cost a scheduler slice
on shared cores."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_import_sets_a_passive_wait_policy_unless_the_user_set_one(
    given: str | None, expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    # -S: no site hooks (.pth files) run, so only the packages can set it; the parent's path
    # is handed over instead.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, sys.path)])
    code = "import latemm, os, torch; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == expected
