"""Distribution strategies of a training run, and who writes what under them.

`--strategy` picks one of TensorFlow's own:

  default        one device (the default strategy);
  mirrored       `tf.distribute.MirroredStrategy` over all local GPUs (or the CPU);
  multi_worker   `tf.distribute.MultiWorkerMirroredStrategy`, the cluster read from `TF_CONFIG`;
  tpu            `tf.distribute.TPUStrategy` on the TPU named by `--tpu`.

`--batch_size` is the global batch: each of the strategy's replicas gets
`batch_size / num_replicas_in_sync` clips per step, and the learning rate applies to the global
batch unchanged (kvid does not rescale it; the linear scaling rule would multiply it by k for a k
times larger global batch). Keras' `fit` splits each global batch over the replicas and sums
their gradients, so a step on several replicas is the step one device takes on the same global
batch, up to batch norm: its statistics are per replica unless `--sync_batch_norm`.

Every worker of a multi-worker run saves its checkpoints and exports (TensorFlow requires all of
them to take part), but only the chief's land in `--workdir`: the other workers write into
`<workdir>/workertemp_<task id>/`, which they delete when the run is complete, the scheme of
`tf_keras`' own multi-worker checkpointing.
"""

from __future__ import annotations

import json
import os
import shutil

import tensorflow as tf
import tf_keras as keras

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
# Bytes per gradient all-reduce of a multi-worker run (a kvid mobile model's gradients fit in one).
GRADIENT_PACK = 32 * 1024 * 1024


class StrategyError(ValueError):
    """A strategy that cannot be created here; the message names the flag or variable."""


def split_cpu(num_devices: int) -> None:
    """Splits the host CPU into `num_devices` logical devices (before TensorFlow initialises).

    A mirrored strategy on a machine without accelerators then has that many replicas: this
    runs the multi-replica code path (gradient all-reduce, per-replica batches, synchronized
    batch norm) on a laptop or in CI.
    """
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_devices
    )


def cluster_spec_from_env() -> dict:
    """The `TF_CONFIG` of a multi-worker run, checked: {"cluster": {...}, "task": {...}}."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise StrategyError(
            "--strategy=multi_worker: TF_CONFIG is not set; give every worker "
            'TF_CONFIG=\'{"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}\' with its own index'
        )
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        task_type, index = task["type"], int(task["index"])
        if len(cluster[task_type]) <= index:
            raise IndexError(f"task index {index} but {len(cluster[task_type])} {task_type}s")
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise StrategyError(
            f"TF_CONFIG: not a cluster description ({type(error).__name__}: {error}); "
            'expected {"cluster": {"worker": [...]}, "task": {"type": "worker", "index": N}}'
        ) from error
    return config


def create_strategy(name: str, tpu: str | None = None) -> tf.distribute.Strategy:
    """The strategy `--strategy=name` asks for.

    Raises:
      StrategyError: the strategy cannot run here (no TF_CONFIG, no TPU); the message names the
        flag or the environment variable to fix.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        cluster_spec_from_env()
        # Gradients all-reduced in packs: one collective per pack instead of one per variable
        # (each collective costs a round trip between the workers when it is first set up).
        options = tf.distribute.experimental.CommunicationOptions(bytes_per_pack=GRADIENT_PACK)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if name == "tpu":
        return _tpu_strategy(tpu)
    raise StrategyError(f"--strategy={name}: unknown; valid: {', '.join(STRATEGIES)}")


def _tpu_strategy(tpu: str | None) -> tf.distribute.Strategy:
    """TPUStrategy on `tpu` ("local" for a TPU VM, else a name or grpc:// address)."""
    address = tpu or "local"
    if address == "local" and not tf.config.list_physical_devices("TPU"):
        raise StrategyError(
            "--strategy=tpu: no TPU on this machine; run on a Cloud TPU VM with a TPU runtime "
            "for this TensorFlow (no libtpu build for TensorFlow 2.21 is on PyPI), or name a "
            "remote TPU with --tpu=<name or grpc://address>"
        )
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as error:
        message = " ".join(str(error).split())[:300]
        raise StrategyError(f"--tpu={address}: cannot reach the TPU: {message}") from error
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs (always true outside multi-worker runs).

    The chief is the task of type "chief", or worker 0 in a cluster without one (TensorFlow's
    convention).
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None or task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def task_id(strategy: tf.distribute.Strategy) -> int:
    """This worker's index in the cluster (0 outside multi-worker runs)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(getattr(resolver, "task_id", None) or 0)


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Workers (machines) of the strategy: 1 unless it is a multi-worker strategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    cluster = resolver.cluster_spec().as_dict()
    return max(1, len(cluster.get("worker", [])) + len(cluster.get("chief", [])))


def gather_from_workers(strategy: tf.distribute.Strategy, value: int) -> list[int]:
    """`value` of every replica of the strategy (all workers), in replica order."""

    def replica_fn():
        context = tf.distribute.get_replica_context()
        return context.all_gather(tf.constant([value], tf.int64), axis=0)

    gathered = strategy.experimental_local_results(strategy.run(replica_fn))[0]
    return [int(v) for v in gathered.numpy()]


def output_dir(workdir: str, strategy: tf.distribute.Strategy) -> str:
    """Where this process writes: the workdir for the chief, a private temporary folder else."""
    if is_chief(strategy):
        return workdir
    return os.path.join(workdir, f"workertemp_{task_id(strategy)}")


def remove_worker_dir(workdir: str, strategy: tf.distribute.Strategy) -> None:
    """Deletes a non-chief worker's temporary folder (and its workdir when that is then empty)."""
    if is_chief(strategy):
        return
    shutil.rmtree(output_dir(workdir, strategy), ignore_errors=True)
    try:
        os.rmdir(workdir)
    except OSError:  # the workdir holds something else (e.g. it is shared with the chief)
        pass


def check_global_batch(batch_size: int, strategy: tf.distribute.Strategy, flag: str) -> int:
    """The per-replica batch of a global batch; it must divide evenly over the replicas."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise StrategyError(
            f"{flag}={batch_size}: the global batch must be a multiple of the "
            f"{replicas} replicas of this strategy (each replica gets batch/replicas clips)"
        )
    return batch_size // replicas


def shard_by_file(policy: str, num_files: int, num_pipelines: int, split: str) -> bool:
    """Whether the input pipelines of a run split a split by file (else by clip).

    "auto" shards by file when every input pipeline (one per worker) gets at least one file, and
    by clip otherwise (every pipeline reads every file and keeps its share of each global batch);
    "file" and "data" force one of them.

    Raises:
      StrategyError: "file" with fewer files than input pipelines.
    """
    if policy == "file" and num_files < num_pipelines:
        raise StrategyError(
            f"--auto_shard=file: the {split} split has {num_files} files for {num_pipelines} "
            "workers, so some workers would get no data; prepare the split into more files "
            "(kvid-prepare --num_shards) or use --auto_shard=data"
        )
    if policy == "auto":
        return num_pipelines > 1 and num_files >= num_pipelines
    return policy == "file"


def synchronize_batch_norm(model: keras.Model) -> int:
    """Makes every batch norm of `model` compute its statistics over the global batch.

    Returns:
      The number of batch norm layers switched.
    """
    count = 0
    for module in model.submodules:
        if isinstance(module, keras.layers.BatchNormalization) and not module.synchronized:
            module.synchronized = True
            module.fused = False  # the fused kernel has no cross-replica reduction
            count += 1
    return count
