"""`python -m recsys.launch`: a local cluster from the command line."""

import subprocess
import sys

from recsys.local_cluster import REPO


def test_launch_runs_the_command_on_every_task_and_returns_the_chiefs_code(tmp_path):
    # A tiny program instead of a training run: each task prints its TF_CONFIG
    # task; the chief (worker 0) exits with 3, the other one waits forever and
    # is ended by the launcher.
    (tmp_path / "task_probe.py").write_text(
        "import json, os, sys, time\n"
        "task = json.loads(os.environ['TF_CONFIG'])['task']\n"
        "print('TASK', task['type'], task['index'], sys.argv[1:], flush=True)\n"
        "if task['index'] == 0:\n"
        "    sys.exit(3)\n"
        "time.sleep(600)\n")
    done = subprocess.run(
        [sys.executable, "-m", "recsys.launch", "--workers=2", f"--task_log_dir={tmp_path / 'logs'}",
         "--", "task_probe", "--flag=1"], cwd=REPO, capture_output=True, text=True,
        timeout=60, env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 3, done.stderr
    assert "TASK worker 0 ['--flag=1']" in done.stdout
    other = (tmp_path / "logs" / "job_worker1.log").read_text()
    assert "TASK worker 1 ['--flag=1']" in other


def test_launch_without_a_command_says_how():
    done = subprocess.run([sys.executable, "-m", "recsys.launch", "--workers=2"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Give the module to run after --" in done.stderr
