"""Where a run trains: a `tf.distribute` strategy and this process's part in it.

`make_distribution(name)` builds one of `STRATEGIES`:

- "default": TensorFlow's default strategy (one device, no distribution).
- "mirrored": `tf.distribute.MirroredStrategy` over this machine's devices
  (GPUs, or the logical CPU devices the process configured).
- "multi_worker": `tf.distribute.MultiWorkerMirroredStrategy` over the
  workers that the `TF_CONFIG` environment variable lists, the same command
  started on every worker. Synchronous data parallelism: every worker holds
  all weights, reads its own shard of the training rows
  (`recsys.data.make_datasets(num_shards=..., shard_index=...)`), and the
  gradients are all-reduced every step, so the run trains on exactly the
  global batches of a single-process run with the same global batch size.
  The chief (worker 0) writes checkpoints, logs and results; the other
  workers write their copies of each checkpoint to a temporary directory
  and delete it (as the TensorFlow guide prescribes). A job that loses a
  worker fails; started again with the same flags, every worker restores
  the chief's last checkpoint and the run continues from there.
- "parameter_server": `tf.distribute.ParameterServerStrategy`:
  `TF_CONFIG` lists a "chief" (the coordinator, which runs the training
  loop), "worker"s and "ps" (parameter server) tasks. Variables live on
  the parameter servers; embedding tables are sharded across them by
  `tf.distribute.experimental.partitioners.MinSizePartitioner`, so a table
  larger than one machine's memory fits in several. Training is
  asynchronous (workers apply their steps as they finish), so runs are not
  bitwise reproducible. Started with the same flags, a "worker" or "ps"
  task serves (`tf.distribute.Server`) until the job ends.
- "tpu": `tf.distribute.TPUStrategy` on the TPU named by `tpu` (an address
  such as "grpc://10.0.0.2:8470", a Cloud TPU name, or "local" on a TPU
  VM), following the TensorFlow TPU guide; native bfloat16 is the natural
  precision there. Untested on real TPUs (none was available).

Example:

>>> distribution = make_distribution("default")
>>> distribution.is_chief, distribution.num_replicas
(True, 1)
"""

import dataclasses
import json
import os
from typing import Optional

from absl import logging
import tensorflow as tf

from recsys.config import MIN_SHARD_BYTES, STRATEGIES

_TF_CONFIG_HELP = (
    "Set TF_CONFIG on every task, e.g. TF_CONFIG='{\"cluster\": {\"worker\": "
    "[\"host1:12345\", \"host2:12345\"]}, \"task\": {\"type\": \"worker\", "
    "\"index\": 0}}' (see the README section 'Running on a cluster').")


@dataclasses.dataclass
class Distribution:
    """A strategy and this process's role in it.

    Attributes:
        name: one of `STRATEGIES`.
        strategy: the `tf.distribute.Strategy`.
        task_type: this task's type in `TF_CONFIG` ("worker", "chief",
            "ps"), or None without a cluster.
        task_id: this task's index within its type (0 without a cluster).
        is_chief: whether this process writes checkpoints, logs and results.
        num_input_pipelines: number of training-data shards (one per
            worker for "multi_worker"; one per worker for
            "parameter_server"; 1 otherwise).
        input_pipeline_index: this process's shard (0 when it reads all).
        server: the `tf.distribute.Server` of a "worker"/"ps" task of a
            parameter-server cluster (which only serves), else None.
        num_parameter_servers: the "ps" tasks of a parameter-server cluster.
    """

    name: str
    strategy: tf.distribute.Strategy
    task_type: Optional[str] = None
    task_id: int = 0
    is_chief: bool = True
    num_input_pipelines: int = 1
    input_pipeline_index: int = 0
    server: Optional[object] = None
    num_parameter_servers: int = 0

    @property
    def num_replicas(self):
        """Replicas that train in sync (per step, for "parameter_server")."""
        return self.strategy.num_replicas_in_sync

    @property
    def is_server_only(self):
        """A parameter-server cluster's "worker"/"ps" task: it only serves."""
        return self.server is not None

    @property
    def uses_coordinator(self):
        """Whether training is scheduled by a `ClusterCoordinator`."""
        return self.name == "parameter_server"

    def write_dir(self, directory):
        """Where this process writes files that the chief writes to `directory`.

        The chief writes to `directory`; every other worker to a temporary
        directory of its own inside it (MultiWorkerMirroredStrategy needs
        every worker to save a checkpoint; only the chief's is kept).
        """
        if self.is_chief:
            return directory
        return os.path.join(directory, f".worker_temp_{self.task_id}")

    def remove_write_dir(self, directory):
        """Deletes a non-chief worker's temporary `write_dir(directory)`."""
        if not self.is_chief:
            path = self.write_dir(directory)
            if tf.io.gfile.exists(path):
                tf.io.gfile.rmtree(path)

    def barrier(self):
        """Waits until every worker of a multi-worker strategy gets here.

        A no-op for other strategies. (A tiny all-reduce: a worker that exits
        while another still runs collectives makes that one fail.)
        """
        if self.name != "multi_worker":
            return
        one = self.strategy.run(lambda: tf.constant(1.0))
        self.strategy.reduce(tf.distribute.ReduceOp.SUM, one, axis=None).numpy()

    def describe(self):
        """One line for logs."""
        text = f"{self.name} strategy, {self.num_replicas} replica(s)"
        if self.task_type is not None:
            text += f"; this task: {self.task_type} {self.task_id}"
            text += " (chief)" if self.is_chief else ""
        if self.uses_coordinator:
            text += (f"; {self.num_input_pipelines} workers, "
                     f"{self.num_parameter_servers} parameter servers")
        elif self.num_input_pipelines > 1:
            text += (f"; training data shard {self.input_pipeline_index} of "
                     f"{self.num_input_pipelines}")
        return text


def read_tf_config():
    """The parsed `TF_CONFIG` environment variable, or None if unset.

    Raises:
        ValueError: if it is not valid JSON with "cluster" and "task".
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}): {raw!r}. "
                         f"{_TF_CONFIG_HELP}") from None
    if not isinstance(config, dict) or "cluster" not in config or "task" not in config:
        raise ValueError(f"TF_CONFIG needs a 'cluster' and a 'task'; got {raw!r}. "
                         f"{_TF_CONFIG_HELP}")
    task = config["task"]
    cluster = config["cluster"]
    if task.get("type") not in cluster:
        raise ValueError(f"TF_CONFIG's task type {task.get('type')!r} is not in its "
                         f"cluster {sorted(cluster)}.")
    if not 0 <= int(task.get("index", 0)) < len(cluster[task["type"]]):
        raise ValueError(f"TF_CONFIG's task index {task.get('index')} is out of range "
                         f"for the {len(cluster[task['type']])} {task['type']} task(s).")
    return config


def make_distribution(name, *, tpu=None, min_shard_bytes=MIN_SHARD_BYTES):
    """Builds the strategy `name` and finds this process's role.

    Must be called before any other TensorFlow operation of the process
    (multi-worker and TPU strategies configure the runtime).

    Args:
        name: one of `STRATEGIES`.
        tpu: for "tpu": the TPU's address or name ("local" on a TPU VM).
        min_shard_bytes: for "parameter_server": variables larger than this
            are split into shards of at least this many bytes, at most one
            per parameter server.

    Returns:
        A `Distribution`.

    Raises:
        ValueError: for an unknown name, or a cluster set-up that does not
            match the strategy (the message says what to set).
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}.")
    if (name == "tpu") != (tpu is not None):
        raise ValueError("--tpu (the TPU's address or name, 'local' on a TPU VM) goes "
                         "with --strategy=tpu, and only with it.")
    config = read_tf_config()
    if name in ("default", "mirrored"):
        if config is not None:
            logging.warning("TF_CONFIG is set but the %s strategy ignores it; use "
                            "--strategy=multi_worker or parameter_server.", name)
        strategy = (tf.distribute.get_strategy() if name == "default"
                    else tf.distribute.MirroredStrategy())
        return Distribution(name, strategy)
    if name == "multi_worker":
        return _multi_worker(config)
    if name == "parameter_server":
        return _parameter_server(config, min_shard_bytes)
    return _tpu(tpu)


def start(distribution_config):
    """The `Distribution` of a `recsys.config.DistributionConfig`, logged.

    A "worker" or "ps" task of a parameter-server cluster does not train: it
    serves the chief here until the job ends, then the process exits.
    """
    dc = distribution_config
    distribution = make_distribution(dc.strategy, tpu=dc.tpu,
                                     min_shard_bytes=dc.ps_min_shard_bytes)
    logging.info("Distribution: %s", distribution.describe())
    if distribution.is_server_only:
        logging.info("Serving the cluster until the job ends.")
        distribution.server.join()
        raise SystemExit(0)
    return distribution


def _multi_worker(config):
    if config is None or set(config["cluster"]) - {"chief", "worker"}:
        raise ValueError("--strategy=multi_worker needs TF_CONFIG with a cluster of "
                         f"'worker' (and optionally 'chief') tasks. {_TF_CONFIG_HELP}")
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, int(resolver.task_id)
    tasks = [(t, i) for t in ("chief", "worker") for i in range(len(config["cluster"].get(t, [])))]
    index = tasks.index((task_type, task_id))
    # The chief is the "chief" task if there is one, else worker 0.
    is_chief = index == 0
    return Distribution("multi_worker", strategy, task_type, task_id, is_chief,
                        num_input_pipelines=len(tasks), input_pipeline_index=index)


def _parameter_server(config, min_shard_bytes):
    cluster = (config or {}).get("cluster", {})
    if not {"chief", "worker", "ps"} <= set(cluster):
        raise ValueError("--strategy=parameter_server needs TF_CONFIG with 'chief', "
                         "'worker' and 'ps' tasks: run the same command with "
                         "task type chief (the coordinator), worker and ps. "
                         f"{_TF_CONFIG_HELP}")
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    task_type, task_id = resolver.task_type, int(resolver.task_id)
    if task_type in ("worker", "ps"):
        server = tf.distribute.Server(resolver.cluster_spec(), job_name=task_type,
                                      task_index=task_id, protocol=resolver.rpc_layer or "grpc",
                                      start=True)
        return Distribution("parameter_server", tf.distribute.get_strategy(), task_type,
                            task_id, is_chief=False, server=server)
    num_ps = len(cluster["ps"])
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=min_shard_bytes, max_shards=num_ps)
    strategy = tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)
    return Distribution("parameter_server", strategy, task_type, task_id, is_chief=True,
                        num_input_pipelines=len(cluster["worker"]),
                        num_parameter_servers=num_ps)


def sharded_variables(model):
    """The model's variables that are split into shards (over parameter
    servers), each once: `ShardedVariable`s, whose `.variables` are the
    shards."""
    found = {}
    for module in model.submodules:
        for value in vars(module).values():
            if isinstance(value, tf.__internal__.distribute.ShardedVariable):
                found.setdefault(id(value), value)
    return list(found.values())


def describe_shards(variable):
    """One line on where a `ShardedVariable`'s shards live."""
    name = variable.variables[0].name.rsplit("/part_", 1)[0]
    rows = [int(v.shape[0]) for v in variable.variables]
    return (f"{name}: {sum(rows)} rows in {len(rows)} shards {rows} on "
            f"{', '.join(v.device for v in variable.variables)}")


def _tpu(tpu):
    # As in the TensorFlow TPU guide (https://www.tensorflow.org/guide/tpu).
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu="" if tpu == "local" else tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return Distribution("tpu", tf.distribute.TPUStrategy(resolver))
