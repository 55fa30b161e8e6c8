"""`python -m recsys.launch`: a local cluster from the command line."""

import subprocess
import sys

import pytest

from recsys.local_cluster import REPO


@pytest.mark.slow
def test_launch_runs_the_command_on_every_task_and_returns_the_chiefs_code(tmp_path):
    # A tiny program instead of a training run: each task prints its TF_CONFIG
    # task; worker 1 then signals that it has and waits forever (the launcher
    # must end it); the chief (worker 0) waits for that signal and exits with 3.
    ready = tmp_path / "worker1_ready"
    (tmp_path / "task_probe.py").write_text(
        "import json, os, pathlib, sys, time\n"
        "task = json.loads(os.environ['TF_CONFIG'])['task']\n"
        "print('TASK', task['type'], task['index'], sys.argv[1:], flush=True)\n"
        f"ready = pathlib.Path({str(ready)!r})\n"
        "if task['index'] == 1:\n"
        "    ready.touch()\n"
        "    time.sleep(600)\n"
        "deadline = time.monotonic() + 50\n"
        "while not ready.exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "sys.exit(3)\n")
    done = subprocess.run(
        [sys.executable, "-m", "recsys.launch", "--workers=2",
         f"--task_log_dir={tmp_path / 'logs'}", "--", "task_probe", "--flag=1"],
        cwd=REPO, capture_output=True, text=True,
        timeout=60, env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 3, done.stderr
    assert ready.exists()
    assert "TASK worker 0 ['--flag=1']" in done.stdout
    other = (tmp_path / "logs" / "job_worker1.log").read_text()
    assert "TASK worker 1 ['--flag=1']" in other


@pytest.mark.slow
def test_launch_without_a_command_says_how():
    done = subprocess.run([sys.executable, "-m", "recsys.launch", "--workers=2"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Give the module to run after --" in done.stderr
