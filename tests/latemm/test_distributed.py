"""The watchdog of a local Ray cluster (``latemm.runs.distributed.watch_session``), without Ray:
once the driver is gone, it ends exactly the processes that write into the session's folder (those
that ignore SIGTERM too), and nothing while the driver lives. ``test_ray.py`` checks it on a
real cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the watchdog reads /proc"
)

SLEEPER = """
import signal, sys, time
if sys.argv[1] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
handle = open(sys.argv[2], sys.argv[3]) if len(sys.argv) > 2 else None
print("ready", flush=True)
time.sleep(600)
"""
DRIVER = """
import os, sys, time
from latemm.runs.distributed import watch_session
watch_session(sys.argv[1] or None)
print("ready", flush=True)
print(os.getpid(), flush=True)
time.sleep(600)
"""


def _start(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), *sys.path])}
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def _ended_within(process: subprocess.Popen[str], seconds: float) -> bool:
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_the_watchdog_ends_the_sessions_writers_once_the_driver_is_gone(tmp_path) -> None:
    session, elsewhere = tmp_path / "session_1", tmp_path / "session_10"  # a shared prefix
    (session / "logs").mkdir(parents=True)
    elsewhere.mkdir()
    (session / "logs" / "old.log").write_text("read, not written\n")
    processes = {
        "writer": _start(SLEEPER, "-", str(session / "logs" / "worker.out"), "w"),
        "stubborn writer": _start(SLEEPER, "ignore-term", str(session / "agent.err"), "a"),
        "reader": _start(SLEEPER, "-", str(session / "logs" / "old.log"), "r"),
        "writer elsewhere": _start(SLEEPER, "-", str(elsewhere / "worker.out"), "w"),
        "bystander": _start(SLEEPER, "-"),
    }
    try:
        driver = _start(DRIVER, str(session))
        time.sleep(1)
        assert all(p.poll() is None for p in processes.values()), "ended while the driver lives"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        # SIGTERM, then SIGKILL after 3 s for what is left.
        assert _ended_within(processes["writer"], 15)
        assert _ended_within(processes["stubborn writer"], 15)
        assert processes["stubborn writer"].returncode == -signal.SIGKILL
        for name in ("reader", "writer elsewhere", "bystander"):
            assert processes[name].poll() is None, f"the watchdog ended the {name}"
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def test_a_driver_killed_before_its_session_is_known_ends_its_pids_session(tmp_path) -> None:
    """Killed inside ``ray.init``: the watchdog was started but never told the folder, so it
    ends the writers of ``session_*_<driver pid>``, the name Ray gives the driver's session."""
    driver = _start(DRIVER, "")
    assert driver.stdout is not None
    pid = int(driver.stdout.readline())
    ours, other = tmp_path / f"session_2026_{pid}", tmp_path / f"session_2026_{pid}1"
    for folder in (ours, other):
        (folder / "logs").mkdir(parents=True)
    processes = {
        "writer": _start(SLEEPER, "-", str(ours / "logs" / "raylet.out"), "w"),
        "writer of another pid's session": _start(SLEEPER, "-", str(other / "raylet.out"), "w"),
    }
    try:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        assert _ended_within(processes["writer"], 15)
        assert processes["writer of another pid's session"].poll() is None
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
