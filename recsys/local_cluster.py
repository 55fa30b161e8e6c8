"""A TensorFlow cluster of local processes, one per task, on 127.0.0.1.

For trying `--strategy=multi_worker` or `--strategy=parameter_server` on one
machine (`python -m recsys.launch`), for the tests and for
`benchmarks.scaling`: every task runs the same command with its own
`TF_CONFIG` (free ports chosen at run time) and logs to its own file, and
every process is ended when the job is done.
"""

import json
import os
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_ports(count):
    """`count` distinct free TCP ports on 127.0.0.1."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class LocalCluster:
    """Processes running `python -m <program> <args>`, one per task.

    Args:
        log_dir: directory for the logs (`<name>_<type><index>.log`).
        tasks: `{task type: count}`, e.g. `{"worker": 2}` or
            `{"chief": 1, "worker": 1, "ps": 2}`.
        program: the Python module every task runs.
        args: its command-line arguments (the same for every task).
        name: prefix of the log files.
        env: extra environment variables for every task.

    Example:

    >>> with LocalCluster("/tmp/logs", {"worker": 2}, "recsys.train",
    ...                   ["--strategy=multi_worker", "--model_dir=/tmp/run"]) as job:
    ...     codes = job.wait(job.tasks)
    """

    def __init__(self, log_dir, tasks, program, args, name="job", env=None):
        os.makedirs(str(log_dir), exist_ok=True)
        ports = iter(free_ports(sum(tasks.values())))
        cluster = {kind: [f"127.0.0.1:{next(ports)}" for _ in range(count)]
                   for kind, count in tasks.items()}
        self.tasks = [(kind, index) for kind, count in tasks.items()
                      for index in range(count)]
        self.logs, self.processes = {}, {}
        for kind, index in self.tasks:
            task = (kind, index)
            self.logs[task] = os.path.join(str(log_dir), f"{name}_{kind}{index}.log")
            task_env = dict(os.environ, **(env or {}), TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": kind, "index": index}}))
            with open(self.logs[task], "w") as out:
                self.processes[task] = subprocess.Popen(
                    [sys.executable, "-m", program, *args], cwd=REPO, env=task_env,
                    stdout=out, stderr=subprocess.STDOUT)

    @property
    def chief(self):
        """The chief task: ("chief", 0) if there is one, else ("worker", 0)."""
        return ("chief", 0) if ("chief", 0) in self.processes else ("worker", 0)

    def wait(self, tasks, timeout=None):
        """Waits for `tasks` (a list of (type, index)) to end, then kills
        every process; returns their exit codes, in order.

        Raises:
            subprocess.TimeoutExpired: if they do not end in `timeout` s
                (every process is killed all the same).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for task in tasks:
                left = None if deadline is None else max(1.0, deadline - time.monotonic())
                self.processes[task].wait(timeout=left)
        finally:
            self.kill()
        return [self.processes[task].returncode for task in tasks]

    def kill(self):
        """Kills (SIGKILL) every process still running."""
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()

    def running(self, task):
        """Whether a task's process is still running."""
        return self.processes[task].poll() is None

    def output(self, task):
        """A task's log so far."""
        with open(self.logs[task]) as f:
            return f.read()

    def tail(self, tasks=None, chars=3000):
        """The end of each task's log, for error messages."""
        return "\n".join(f"--- {t}:\n{self.output(t)[-chars:]}" for t in (tasks or self.tasks))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
