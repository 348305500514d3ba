"""The device Mesh, how arrays are laid out on it, the pmap path, and multi-process start-up.

Three ways to run the same pure train step (config.parallel):
  jit (default)  one program over a 1-D Mesh: the global batch is split over its 'data' axis and
                 the train state is replicated; XLA (GSPMD) inserts the gradient all-reduce.
  jit + fsdp     the same, with params and optimizer state sharded over 'data' as well (ZeRO-3):
                 each array's largest divisible dimension is split, small arrays are replicated.
  pmap           jax.pmap over the devices, with the gradient averaged by lax.pmean inside the
                 step (steps.train_step's axis_name): the classic replicated data parallelism.
In every mode the state outside the step is the same pytree of global arrays, so checkpoints,
evaluation and resumes do not care which mode wrote them (Orbax reshards on restore).

Each process hands over only its local part of the batch; `jax.make_array_from_process_local_data`
assembles the global array. Multi-process jobs (a TPU pod slice, several GPU hosts, or several CPU
processes on one machine) start with `initialize`, which main.py calls before anything touches a
device.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import importlib.util
import math
import os
import re
import threading
from typing import Any, Callable

import jax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from jaxdl.errors import UserError, exit_at_once, first_line, require


MESH_AXES = ("data", "model")

# Logical axis names of params (models/transformer.py) → mesh axes: Megatron-style tensor
# parallelism. Attention heads and the MLP's hidden units split over 'model' (qkv and mlp_in
# column-parallel, out and mlp_out row-parallel: one all-reduce per sublayer), and so do the
# vocabulary's rows (the embedding, and the logits of the tied or separate output layer). Any
# other name (embed, kv, positions, a user's own) stays whole on 'model'.
LOGICAL_RULES = {"heads": "model", "mlp": "model", "vocab": "model"}

# Logical axis names of activations, for the constraints a model places with
# nn.with_logical_constraint(x, names, rules=ACTIVATION_RULES) (the transformer's, between
# scanned blocks): the batch over 'data'. In a loop over stacked layers (model.scan_layers),
# XLA's sharding propagation otherwise follows fsdp's split of the params' embed dimension onto
# the activations and replicates the batch: 12.7 GB of temp memory per device for the 86M step
# on (8,)+fsdp, 2.8 GB with it (bench README section 8). The rules are passed, not set as
# Flax's context: there Flax would also constrain every boxed param by them (nn.DenseGeneral's
# reshaped kernel then fails to trace).
ACTIVATION_RULES = (("batch", "data"),)


def activation_sharding(mesh: Mesh):
  """The mesh in context (jax.set_mesh), under which a model's logical constraints take effect
  in the jit steps traced there; outside it (sample, predict) they do nothing. jax.jit keys its
  cache on the mesh context, so every call of such a step is made under it."""
  return jax.set_mesh(mesh)


def mesh_dims(mesh_shape: tuple[int, ...], devices: int) -> tuple[int, int]:
  """config.parallel.mesh_shape as (data, model) device counts: (-1,) or (n,) is every device on
  'data'; (d, m) with at most one -1, filled in from the device count."""
  shape = tuple(mesh_shape) + (1,) * (2 - len(mesh_shape))
  if shape.count(-1) == 1:
    rest = -math.prod(shape)
    shape = tuple(devices // rest if n == -1 else n for n in shape) if devices % rest == 0 \
        else shape
  if math.prod(shape) != devices or -1 in shape:
    raise UserError(f"config.parallel.mesh_shape={tuple(mesh_shape)} does not fit the job's "
                    f"{devices} devices: (data, model) must multiply to {devices}, e.g. "
                    f"({devices},) or ({max(devices // 2, 1)}, {min(devices, 2)})")
  return shape


def model_axis_size(mesh_shape: tuple[int, ...]) -> int:
  """The 'model' axis of config.parallel.mesh_shape: as written, or (when -1) from the job's
  devices; known before the mesh is made, for the config's checks."""
  shape = tuple(mesh_shape)
  if len(shape) < 2 or shape[1] != -1:
    return shape[1] if len(shape) == 2 else 1
  return mesh_dims(shape, jax.device_count())[1]


def make_mesh(mesh_shape: tuple[int, ...] = (-1,)) -> Mesh:
  """The (data, model) mesh over every device of the job (mesh_dims)."""
  shape = mesh_dims(mesh_shape, jax.device_count())
  # Auto axes: jit propagates shardings from the inputs (classic GSPMD). make_mesh defaults to
  # Explicit axes, whose sharding-in-types rules this code does not need.
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 2)


def check_batch(name: str, batch_size: int, mesh: Mesh) -> None:
  """The global batch must split evenly over the data axis (and so over the processes)."""
  n = mesh.shape["data"]
  if batch_size % n:
    raise UserError(f"{name}={batch_size} is not divisible by the {n} devices of the 'data' "
                    f"mesh axis")


def check_microbatch(batch_size: int, k: int, mesh: Mesh) -> None:
  """Gradient accumulation splits each device's rows of a batch k ways (steps.microbatches)."""
  per_device = batch_size // mesh.shape["data"]
  require(per_device % k == 0, "train.grad_accum_steps", k, f"must divide the per-device batch, "
          f"{per_device} (batch_size={batch_size} over {mesh.shape['data']} devices)")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def _names(path) -> tuple[str, ...]:
  return tuple(str(getattr(e, "key", getattr(e, "name", getattr(e, "idx", e)))) for e in path)


def state_specs(abstract_state: Any, axis_sizes: dict[str, int], fsdp: bool, min_size: int,
                param_axes: Any = None) -> Any:
  """The train state's PartitionSpecs: tensor-parallel over 'model', then (fsdp) over 'data'.

  A param whose logical axis names LOGICAL_RULES maps to 'model' is split there, and so is
  every array of the state that mirrors it (its optimizer moments, its moving average: the
  leaves whose path ends in the param's path, with its shape); a dimension that 'model' does
  not divide stays whole. FSDP then splits the largest remaining dimension that 'data'
  divides, so each device holds 1/n of it; arrays under `min_size` elements (biases, norms,
  scalars such as the step and Adam's count) and arrays with no divisible dimension stay
  replicated on 'data'. XLA all-gathers the params where the step needs them whole.
  """
  tp = {}
  for path, spec in jax.tree_util.tree_flatten_with_path(
      param_axes or {}, is_leaf=lambda x: isinstance(x, P))[0]:
    tp[_names(path)] = tuple(LOGICAL_RULES.get(name) for name in spec)
  n, m = axis_sizes["data"], axis_sizes.get("model", 1)

  def layout(path, x):
    names = _names(path)
    axes = next((tp[names[i:]] for i in range(len(names)) if names[i:] in tp
                 and len(tp[names[i:]]) == x.ndim), (None,) * x.ndim)
    axes = [a if a is None or (m > 1 and x.shape[d] % m == 0) else None
            for d, a in enumerate(axes)]
    if fsdp and x.size >= min_size:
      for dim in sorted(range(x.ndim), key=lambda d: -x.shape[d]):
        if axes[dim] is None and x.shape[dim] % n == 0:
          axes[dim] = "data"
          break
    while axes and axes[-1] is None:
      axes.pop()
    return P(*axes)

  return jax.tree_util.tree_map_with_path(layout, abstract_state)


def state_shardings(abstract_state: Any, mesh: Mesh, fsdp: bool, min_size: int,
                    param_axes: Any = None) -> Any:
  """state_specs as NamedShardings on `mesh`."""
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec),
                      state_specs(abstract_state, dict(mesh.shape), fsdp, min_size, param_axes),
                      is_leaf=lambda x: isinstance(x, P))


def uses_model_axis(param_axes: Any) -> bool:
  """Whether any param has a logical axis that LOGICAL_RULES puts on 'model'."""
  return any(LOGICAL_RULES.get(name) == "model" for spec in jax.tree.leaves(
      param_axes, is_leaf=lambda x: isinstance(x, P)) for name in spec)


def sharded_bytes_per_device(state: Any) -> int:
  """Bytes of `state` that one device holds (the largest share over the devices)."""
  per_device = {}
  for x in jax.tree.leaves(state):
    for shard in x.addressable_shards:
      per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
  return max(per_device.values())


def pmap_train_step(step: Callable, mesh: Mesh) -> Callable:
  """`step(state, batch, axis_name=...)` under jax.pmap, called like the jit step.

  The state goes in and comes out as the same replicated global arrays as in jit mode
  (in_axes/out_axes None); the batch, this process's rows, is split into one slice per local
  device. pmap returns arrays on this process's devices only, so they are re-assembled into
  global arrays on the mesh (no copy), which keeps checkpoints and evaluation mode-agnostic.
  """
  pmapped = jax.pmap(functools.partial(step, axis_name="data"), axis_name="data",
                     in_axes=(None, 0), out_axes=(None, None), donate_argnums=0)
  n_local = jax.local_device_count()

  def run(state, local_batch: dict[str, np.ndarray]):
    per_device = {k: v.reshape(n_local, v.shape[0] // n_local, *v.shape[1:])
                  for k, v in local_batch.items()}
    state, sums = pmapped(state, per_device)
    return to_global(state, mesh), to_global(sums, mesh)

  return run


def to_global(tree: Any, mesh: Mesh) -> Any:
  """Replicated arrays on this process's devices → replicated global arrays on `mesh`."""
  sharding = replicated(mesh)

  def glob(x):
    if x.sharding == sharding:
      return x
    return jax.make_array_from_single_device_arrays(
        x.shape, sharding, [shard.data for shard in x.addressable_shards])

  return jax.tree.map(glob, tree)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows → global arrays sharded over 'data' (no copy between hosts)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def broadcast_text(text: str, source: int = 0, size: int = 4096) -> str:
  """`text` as process `source` has it, on every process (itself on a lone process)."""
  if jax.process_count() == 1:
    return text
  data = np.zeros(size, np.uint8)
  encoded = np.frombuffer(text.encode("utf-8")[:size], np.uint8)
  data[:len(encoded)] = encoded
  data = multihost_utils.broadcast_one_to_all(data, is_source=jax.process_index() == source)
  return bytes(np.asarray(data)).rstrip(b"\0").decode("utf-8", errors="replace")


def _on_cloud_tpu_vm() -> bool:
  """True on a Cloud TPU VM: libtpu is installed and TPU chips are attached.

  JAX keeps its own answer in a private module (cloud_tpu_init), which changes between
  releases, so this asks the same two questions through public means. TPU chips appear as
  /dev/accel* (TPU v2-v4) or as VFIO groups /dev/vfio/<n> (v5e and later); a machine without
  libtpu (a GPU host with VFIO passthrough) is not a TPU VM whatever it has. Elsewhere an
  explicit --coordinator_address (or JAX_COORDINATOR_ADDRESS) starts a multi-process job.
  """
  if importlib.util.find_spec("libtpu") is None:
    return False
  return bool(glob.glob("/dev/accel*") or
              [p for p in glob.glob("/dev/vfio/*") if os.path.basename(p).isdigit()])


def initialize(coordinator_address: str = "", num_processes: int = 0,
               process_id: int = -1, timeout: int = 300) -> None:
  """Joins the multi-process job when one is configured; does nothing for a lone process.

  A job is configured by the arguments (main.py's --coordinator_address, --num_processes,
  --process_id), else by JAX's JAX_COORDINATOR_ADDRESS environment variable (the process count and
  id then come from the arguments or JAX's cluster detection: Slurm, Open MPI, Kubernetes), or by
  running on a Cloud TPU VM, where JAX finds every value itself. Must run before any JAX
  computation. A process still waiting for the others after `timeout` seconds stops with one
  line (exit 1).
  """
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  source = "--coordinator_address" if coordinator_address else "JAX_COORDINATOR_ADDRESS"
  if not address:
    if num_processes > 0 or process_id >= 0:
      raise UserError("--num_processes and --process_id need --coordinator_address=HOST:PORT "
                      "(the address of process 0)")
    if not _on_cloud_tpu_vm():
      return  # one process: nothing to join
    with _join_deadline(timeout, "the TPU VM's workers"):
      jax.distributed.initialize(initialization_timeout=timeout + _JAX_GRACE)  # from metadata
    _check_devices()
    return

  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise UserError(f"{source}={address}: must be HOST:PORT, e.g. 127.0.0.1:12345")
  if (num_processes > 0) != (process_id >= 0):
    raise UserError("--num_processes and --process_id go together (or neither, for JAX's "
                    "cluster detection)")
  if num_processes > 0 and not 0 <= process_id < num_processes:
    raise UserError(f"--process_id={process_id}: must be in 0..{num_processes - 1} "
                    f"(--num_processes={num_processes})")
  # Cross-process collectives on CPU (localhost jobs, tests) go through gloo; TPU and GPU use
  # their own interconnect and ignore this.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  _size_cpu_thread_pool(_cpu_devices())
  try:
    with _join_deadline(timeout, f"the job at {source}={address}"):
      jax.distributed.initialize(address, num_processes if num_processes > 0 else None,
                                 process_id if process_id >= 0 else None,
                                 initialization_timeout=timeout + _JAX_GRACE)
  except (ValueError, RuntimeError) as e:
    raise UserError(f"cannot join the job at {source}={address}: {first_line(e)} (pass "
                    f"--num_processes and --process_id)") from None
  # The coordinator (process 0) fixes the job's size and a process told another size joins
  # anyway (JAX does not compare). Every process shares the size it was given, so all of them
  # stop with the same line instead of the right ones waiting for a peer that left.
  if num_processes > 0:
    given = multihost_utils.process_allgather(np.int32(num_processes))
    for index, count in enumerate(given.tolist()):
      if count != jax.process_count():
        raise UserError(f"process {index} has --num_processes={count}, which disagrees with the "
                        f"coordinator at {address}, whose job has {jax.process_count()} processes")
  _check_devices()


_JAX_GRACE = 30  # JAX's own deadline comes this much later than ours (see _join_deadline)


@contextlib.contextmanager
def _join_deadline(seconds: int, job: str):
  """Stops this process with one line if the block (joining the job) takes over `seconds`.

  When processes are missing, JAX's distributed client does not raise: at its deadline its C++
  aborts the process with a stack trace. So jaxdl keeps a deadline of its own, ahead of JAX's;
  the call releases the GIL while it waits, so a timer thread can end the process first.
  """
  def give_up():  # the main thread is inside JAX's C++: no clean exit
    exit_at_once(f"not every process joined {job} within --initialization_timeout={seconds} s: "
                 f"a process is missing or still starting, or a host was given another "
                 f"--coordinator_address or --num_processes")
  timer = threading.Timer(seconds, give_up)
  timer.daemon = True
  timer.start()
  try:
    yield
  finally:
    timer.cancel()


def set_cpu_devices(count) -> None:
  """Makes the CPU backend `count` devices (config.parallel.cpu_devices; 0 leaves JAX's default).

  XLA:CPU runs a small model's ops one after another, each on one core (the tiny LM's profile:
  experiments/bench/README.md), so one device leaves the other cores mostly idle. N devices run
  N slices of the batch at once, as on N accelerators. Must run before JAX's backends start.
  """
  require(isinstance(count, int) and not isinstance(count, bool) and count >= 0,
          "parallel.cpu_devices", count, "must be an integer >= 0 (0 = JAX's default)")
  if count > 0:
    jax.config.update("jax_num_cpu_devices", count)
  if _cpu_devices() > 1:  # also devices made by XLA_FLAGS' --xla_force_host_platform_device_count
    _size_cpu_thread_pool(_cpu_devices())


def _size_cpu_thread_pool(devices: int) -> None:
  """An all-reduce holds a thread of XLA:CPU's pool until every device has joined, and the pool
  has one thread per core: with fewer cores than local devices (plus the next step's dispatch)
  a step can deadlock in the rendezvous (seen with 2 devices on 2 cores, in one process and
  across two). PJRT_NPROC sizes that pool; it must be set before the CPU backend starts."""
  os.environ.setdefault("PJRT_NPROC", str(max(os.cpu_count() or 1, 2 * devices + 1)))


def _cpu_devices() -> int:
  """The CPU devices this process will have (jax_num_cpu_devices, else XLA_FLAGS, else 1)."""
  if jax.config.jax_num_cpu_devices > 0:
    return jax.config.jax_num_cpu_devices
  match = re.search(r"--xla_force_host_platform_device_count=(\d+)",
                    os.environ.get("XLA_FLAGS", ""))
  return int(match.group(1)) if match else 1


def _check_devices() -> None:
  """Every process must hold as many devices as every other: each feeds an equal batch slice."""
  if jax.device_count() != jax.local_device_count() * jax.process_count():
    raise UserError(f"process {jax.process_index()} has {jax.local_device_count()} devices but "
                    f"the job's {jax.process_count()} processes have {jax.device_count()} in "
                    f"all; give every process the same number of devices")
