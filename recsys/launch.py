r"""Runs a command as a TensorFlow cluster of local processes, one per task.

Every task runs the same command with its own `TF_CONFIG` on 127.0.0.1 (free
ports chosen at run time) and logs to `--task_log_dir`; when the chief (the
"chief" task if there is one, else worker 0) exits, every other process is
ended and the chief's exit code is returned. A way to try multi-worker and
parameter-server training on one machine before a real cluster.

Usage (everything after `--` is the module and arguments each task runs):

    python -m recsys.launch --workers=2 --task_log_dir=/tmp/mw -- \
        recsys.train --strategy=multi_worker --model_dir=/tmp/mw/run
    python -m recsys.launch --chief --workers=1 --ps=2 -- \
        recsys.train --strategy=parameter_server --model_dir=/tmp/ps/run
"""

import sys

from absl import app
from absl import flags
from absl import logging

from recsys.local_cluster import LocalCluster

FLAGS = flags.FLAGS
flags.DEFINE_integer("workers", 2, "Worker tasks.", lower_bound=1)
flags.DEFINE_integer("ps", 0, "Parameter-server tasks.", lower_bound=0)
flags.DEFINE_bool("chief", False, "Add a chief task (the coordinator of a "
                  "parameter-server cluster).")
flags.DEFINE_string("task_log_dir", "local_cluster_logs", "Directory for the task logs.")


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("Give the module to run after --, e.g. `python -m "
                             "recsys.launch --workers=2 -- recsys.train "
                             "--strategy=multi_worker --model_dir=/tmp/run`.")
    tasks = {"chief": 1} if FLAGS.chief else {}
    tasks["worker"] = FLAGS.workers
    if FLAGS.ps:
        tasks["ps"] = FLAGS.ps
    with LocalCluster(FLAGS.task_log_dir, tasks, argv[1], argv[2:]) as job:
        logging.info("Started %s; logs in %s/", ", ".join(f"{t} {i}" for t, i in job.tasks),
                     FLAGS.task_log_dir)
        code, = job.wait([job.chief])
    print(job.output(job.chief)[-2000:])
    sys.exit(code)


if __name__ == "__main__":
    app.run(main)
