"""The device Mesh and how arrays are laid out on it.

Data parallelism: the global batch is split over the mesh's 'data' axis and the train state is
replicated. Each process hands over only its local part of the batch, and
`jax.make_array_from_process_local_data` assembles the global array. One CPU and one host with
several devices work today; multi-host jobs also need jax.distributed.initialize(), which
jaxdl does not call yet.
"""

from __future__ import annotations

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from jaxdl.errors import UserError


def make_mesh() -> Mesh:
  """A 1-D mesh over every device of the job, on the 'data' axis."""
  # Auto axes: jit propagates shardings from the inputs (classic GSPMD). make_mesh defaults to
  # Explicit axes, whose sharding-in-types rules this code does not need.
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def check_batch(name: str, batch_size: int, mesh: Mesh) -> None:
  """The global batch must split evenly over the data axis (and so over the processes)."""
  n = mesh.shape["data"]
  if batch_size % n:
    raise UserError(f"{name}={batch_size} is not divisible by the {n} devices of the 'data' "
                    f"mesh axis")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows → global arrays sharded over 'data' (no copy between hosts)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
