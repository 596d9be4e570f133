"""Data-parallel training engines: where the student's weights live and how a
batch is split over devices and workers.

An engine is a setting of the run (`DistillConfig.distribution`), not a
branch of the training loop: the distiller builds the student inside
`engine.scope()` and hands every batch to `engine.train_on_batch`; the
engines differ only there. The names:

    none           one device: the backend's default (no data parallelism)
    data_parallel  every device of this machine (its GPUs, else its logical
                   CPUs): `keras.distribution.DataParallel` on JAX,
                   `tf.distribute.MirroredStrategy` on TensorFlow
    multi_worker   every device of several machines: TensorFlow's
                   `MultiWorkerMirroredStrategy` (cluster from TF_CONFIG),
                   JAX's `DataParallel` over all processes
                   (`jax.distributed`, from the KERAS_DISTRIBUTION_*
                   variables unless the program initialised it itself)

Batches. The batch a source serves is the *global* batch (batch_size_per_game
x games, whatever the engine): every worker draws the same batch (it is a pure
function of the seed and the batch index) and keeps its contiguous part,
`worker_slice(batch_size, worker_index, num_workers)`; each device takes the
same-sized part of that, so the union over devices is the single-device
batch and each device computes on global / devices samples. The global batch
must split evenly (`check_batch_size`). TensorFlow slices by replica (global
replica r of R takes part r; a worker's replicas are consecutive, so its
replicas' parts make its worker slice); JAX slices by process and lets Keras
lay each process's part over its devices.

Updates. The gradient is that of the mean loss over the global batch, as on
one device: JAX computes that mean itself; TensorFlow runs Keras'
`train_step` on each replica and sums their gradients, so each replica's
loss is divided by the replica count (`per_replica_loss`, as Keras does for
its own losses). The same global batch and learning rate therefore give the
same update, to float rounding, on any number of devices: the learning rate
is not scaled with the device count. Growing the global batch is another
matter (Goyal et al. 2017's linear scaling rule: k times the batch, about k
times the learning rate, with a warm-up).

Start-up. Multi-worker engines configure the runtime (TensorFlow's
collective ops, `jax.distributed`): create them with `get_engine` before the
program's first TensorFlow or JAX operation. `get_engine` keeps one engine
per name and process.
"""

from __future__ import annotations

import contextlib
import os
import weakref

import numpy as np

# The engine names and what each means (flag help, errors).
DISTRIBUTIONS: dict[str, str] = {
    "none": "one device, the backend's default",
    "data_parallel": "every device of this machine (GPUs, else logical CPUs): Keras' "
                     "DataParallel on JAX, MirroredStrategy on TensorFlow",
    "multi_worker": "every device of several machines: MultiWorkerMirroredStrategy on "
                    "TensorFlow (TF_CONFIG), DataParallel over jax.distributed processes on "
                    "JAX (KERAS_DISTRIBUTION_* variables)",
}

# The variables `keras.distribution.initialize` reads (JAX multi_worker).
_KERAS_CLUSTER_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES",
                            "KERAS_DISTRIBUTION_NUM_PROCESSES",
                            "KERAS_DISTRIBUTION_PROCESS_ID")


def worker_slice(batch_size: int, worker_index: int, num_workers: int) -> slice:
    """The contiguous part of a global batch that worker `worker_index` of
    `num_workers` keeps (also a device's part of a batch, by replica index).

    Raises:
      ValueError: the batch does not split into `num_workers` equal parts,
        or the index is out of range.
    """
    if num_workers < 1 or not 0 <= worker_index < num_workers:
        raise ValueError(f"worker_index must be in [0, {num_workers}), found {worker_index}")
    if batch_size % num_workers:
        raise ValueError(f"a batch of {batch_size} samples does not split into "
                         f"{num_workers} equal parts")
    part = batch_size // num_workers
    return slice(worker_index * part, (worker_index + 1) * part)


def _take(batch: dict, part: slice) -> dict:
    """Each array of a batch dict, rows `part`."""
    return {k: v[part] for k, v in batch.items()}


def per_replica_loss(loss):
    """A replica's loss, scaled so that the gradients summed over replicas
    are those of the mean over the global batch: divided by the replica
    count under a TensorFlow strategy, unchanged elsewhere (JAX computes the
    global mean itself; one device has nothing to sum)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return loss
    import tensorflow as tf

    num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if num_replicas == 1:
        return loss
    return loss * (1.0 / num_replicas)


class Engine:
    """One device: the backend's default placement (`"none"`). The base of
    the data-parallel engines, which override `scope`, `train_on_batch`,
    `predict_on_batch` and `local_parts`.

    Attributes:
      name: the engine's name (`DISTRIBUTIONS`).
      num_replicas: devices that each compute on a part of every batch, over
        all workers.
      worker_index: this process's index among the workers (0: the chief,
        the one that writes the run's files).
      num_workers: processes training together.
    """

    name = "none"

    def __init__(self):
        self.num_replicas = 1
        self.worker_index = 0
        self.num_workers = 1

    @property
    def is_chief(self) -> bool:
        """Whether this worker writes the run's files (checkpoints, metrics)."""
        return self.worker_index == 0

    def scope(self) -> contextlib.AbstractContextManager:
        """Where the student and its optimizer must be created."""
        return contextlib.nullcontext()

    def check_batch_size(self, batch_size: int) -> None:
        """Raises ValueError unless a global batch of `batch_size` samples
        splits into equal per-device batches."""
        if batch_size % self.num_replicas:
            raise ValueError(
                f"batch_size_per_game: the global batch of {batch_size} samples (samples "
                f"per game x games) does not split into {self.num_replicas} equal "
                f"per-device batches (--distribution={self.name}: {self.num_replicas} "
                f"devices on {self.num_workers} worker(s)); make it a multiple of "
                f"{self.num_replicas}")

    def train_on_batch(self, model, x: dict, y: dict) -> float:
        """One gradient step of `model` on the global batch (x, y); the loss."""
        return _first(model.train_on_batch(x, y))

    def predict_on_batch(self, model, x: dict) -> dict:
        """The model's outputs on `x` (every row, in order), numpy arrays."""
        return model.predict_on_batch(x)

    def local_parts(self, batch: dict) -> list[dict]:
        """The parts of a global batch that this worker's devices compute on,
        in device order, as numpy arrays (what `train_on_batch` feeds them)."""
        return [batch]

    def describe(self) -> dict:
        """The engine as JSON: name, backend, devices, workers, this worker."""
        import keras

        return {"distribution": self.name, "backend": keras.backend.backend(),
                "devices": self.num_replicas, "workers": self.num_workers,
                "worker_index": self.worker_index}


def _first(loss) -> float:
    return float(np.asarray(loss).reshape(-1)[0])


class _KerasDataParallel(Engine):
    """`keras.distribution.DataParallel` (JAX): variables replicated on every
    device, each batch sharded along its first axis. Keras assembles the
    global batch from each process's part (`jax.make_array_from_process_local_data`)."""

    def __init__(self, name: str):
        super().__init__()
        import jax
        import keras

        self.name = name
        if name == "multi_worker":
            _initialise_jax_cluster()
            devices = jax.devices()
        else:
            if jax.process_count() > 1:
                raise ValueError(
                    f"distribution data_parallel uses this machine's devices, but JAX "
                    f"runs {jax.process_count()} processes (jax.distributed): use "
                    "multi_worker")
            devices = jax.local_devices()
        self.distribution = keras.distribution.DataParallel(devices=devices)
        self.num_replicas = len(devices)
        self.worker_index = jax.process_index()
        self.num_workers = jax.process_count()

    def scope(self):
        return self.distribution.scope()

    def _local(self, batch: dict) -> dict:
        n = len(next(iter(batch.values())))
        return _take(batch, worker_slice(n, self.worker_index, self.num_workers))

    def train_on_batch(self, model, x, y):
        with self.distribution.scope():
            return _first(model.train_on_batch(self._local(x), self._local(y)))

    def predict_on_batch(self, model, x):
        with self.distribution.scope():
            return model.predict_on_batch(x)

    def local_parts(self, batch):
        import jax

        # As Keras lays out a batch (its data layout, the process's part).
        arrays = {k: jax.make_array_from_process_local_data(
                      self.distribution.get_data_layout(v.shape).backend_layout, v)
                  for k, v in self._local(batch).items()}
        shards = {k: sorted(a.addressable_shards, key=lambda s: s.index[0].start or 0)
                  for k, a in arrays.items()}
        count = len(next(iter(shards.values())))
        return [{k: np.asarray(s[i].data) for k, s in shards.items()} for i in range(count)]


def _initialise_jax_cluster() -> None:
    """Starts `jax.distributed` from the KERAS_DISTRIBUTION_* variables, if
    set and not done yet; refuses a run with one process."""
    import jax
    import keras

    if any(os.environ.get(v) for v in _KERAS_CLUSTER_VARIABLES):
        try:
            keras.distribution.initialize()
        except RuntimeError as e:
            # "should only be called once": the program started it itself, fine.
            if "once" not in str(e):
                raise ValueError(f"distribution multi_worker: jax.distributed could not "
                                 f"start ({e}); it must start before any JAX "
                                 "operation") from None
    if jax.process_count() == 1:
        raise ValueError(
            "distribution multi_worker on JAX found one process: set "
            f"{', '.join(_KERAS_CLUSTER_VARIABLES)} on every worker (or call "
            "jax.distributed.initialize first); on one machine use data_parallel")


class _TFStrategy(Engine):
    """A `tf.distribute` strategy (TensorFlow): `MirroredStrategy` over this
    machine's devices, or `MultiWorkerMirroredStrategy` over TF_CONFIG's
    cluster. Each replica gets its part of the global batch; its loss is
    scaled by `per_replica_loss` (in the student's `compute_loss`)."""

    def __init__(self, name: str):
        super().__init__()
        import tensorflow as tf

        self.name = name
        if name == "multi_worker":
            if not os.environ.get("TF_CONFIG"):
                raise ValueError(
                    "distribution multi_worker on TensorFlow reads the cluster from "
                    "TF_CONFIG, which is not set; on one machine use data_parallel")
            try:
                self.strategy = tf.distribute.MultiWorkerMirroredStrategy()
            except (RuntimeError, ValueError) as e:
                raise ValueError(
                    f"distribution multi_worker: MultiWorkerMirroredStrategy could not start "
                    f"({e}); it must be created before any TensorFlow operation "
                    "(distribution.get_engine at program start)") from None
            # Workers in TF's order, the chief (if any) first: index 0 writes the files.
            resolver = self.strategy.cluster_resolver
            cluster = resolver.cluster_spec().as_dict()
            tasks = [("chief", i) for i in range(len(cluster.get("chief", [])))] + \
                [("worker", i) for i in range(len(cluster.get("worker", [])))]
            self.num_workers = len(tasks)
            self.worker_index = tasks.index((resolver.task_type, int(resolver.task_id)))
        else:
            devices = tf.config.list_logical_devices("GPU") or \
                tf.config.list_logical_devices("CPU")
            self.strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
        self.num_replicas = self.strategy.num_replicas_in_sync
        # Per model: its compiled training step and local forward pass.
        self._steps = weakref.WeakKeyDictionary()
        self._forward = weakref.WeakKeyDictionary()

    def scope(self):
        return self.strategy.scope()

    def _per_replica(self, batch: dict):
        n = len(next(iter(batch.values())))

        def part(context):
            return _take(batch, worker_slice(n, context.replica_id_in_sync_group,
                                             context.num_replicas_in_sync))

        return self.strategy.experimental_distribute_values_from_function(part)

    def train_on_batch(self, model, x, y):
        # Keras' own step (`model.train_step`) on each replica, compiled as
        # Keras compiles it; the loss is reduced here because Keras 3's
        # reduction of the logs fails under MultiWorkerMirroredStrategy (a
        # mean along axis 0 of a scalar, tensorflow/tensorflow#72388).
        import tensorflow as tf

        step = self._steps.get(model)
        if step is None:
            def replicated_step(x, y):
                logs = self.strategy.run(model.train_step, args=((x, y),))
                return self.strategy.reduce("MEAN", logs["loss"], axis=None)

            step = self._steps[model] = tf.function(
                replicated_step, reduce_retracing=True, jit_compile=bool(model.jit_compile))
        model.reset_metrics()  # The loss of this batch alone, as train_on_batch gives.
        return _first(step(self._per_replica(x), self._per_replica(y)))

    def local_parts(self, batch):
        values = self.strategy.experimental_local_results(self._per_replica(batch))
        return [{k: np.asarray(v) for k, v in part.items()} for part in values]

    def predict_on_batch(self, model, x):
        # A local forward pass on mirrored weights: predictions need no
        # replicas (Keras' predict would run the whole batch on each replica)
        # and no collective, so workers need not predict in step.
        import tensorflow as tf

        forward = self._forward.get(model)
        if forward is None:
            forward = self._forward[model] = tf.function(
                lambda inputs: model(inputs, training=False), reduce_retracing=True)
        return {k: np.asarray(v) for k, v in forward(x).items()}


_ENGINES: dict[str, Engine] = {}


def get_engine(name: str) -> Engine:
    """The engine `name` (`DISTRIBUTIONS`) of this process, created on first use.

    Raises:
      ValueError: an unknown name, a multi-worker engine without a cluster
        or created too late, or data_parallel on a multi-process JAX.
    """
    if name not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {list(DISTRIBUTIONS)}, found {name!r}")
    if name not in _ENGINES:
        import keras

        backend = keras.backend.backend()
        if name == "none":
            engine = Engine()
        elif backend == "jax":
            engine = _KerasDataParallel(name)
        elif backend == "tensorflow":
            engine = _TFStrategy(name)
        else:
            raise ValueError(f"distribution {name} needs the JAX or TensorFlow backend, "
                             f"found {backend}")
        _ENGINES[name] = engine
    return _ENGINES[name]


def use_cpu_devices(num_devices: int) -> None:
    """Splits the host CPU into `num_devices` logical devices (tests and
    benchmarks of the data-parallel engines on a machine without
    accelerators). Call it before the backend's first operation.

    Raises:
      ValueError: the backend is already running with another device count.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
        except RuntimeError:
            pass  # Already initialised: fine if it has the devices asked for.
        found = len(tf.config.list_logical_devices("CPU"))
    elif backend == "jax":
        import jax

        try:
            # Not checked after (that would start the backend, too early for
            # jax.distributed): JAX refuses the update once it has started.
            jax.config.update("jax_num_cpu_devices", num_devices)
            return
        except RuntimeError:
            found = len(jax.local_devices(backend="cpu"))
    else:
        raise ValueError(f"use_cpu_devices supports TensorFlow and JAX, found {backend}")
    if found != num_devices:
        raise ValueError(f"{backend} already runs on {found} CPU devices, {num_devices} were "
                         "asked for: call use_cpu_devices before the first operation")

