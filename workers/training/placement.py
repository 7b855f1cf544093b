"""Which GPU each colocated train rank (and MC-dropout) uses: the ones the engines hold, and how a rank takes one.

Engines hold whole GPUs: one placement-group bundle of ``gpus_per_engine``
GPUs each, the engine actor taking all of its bundle. With ``colocate`` the
train workers share those GPUs while the engines sleep. Ray cannot express
that sharing: Ray Train builds its own placement group, and fractional GPU
requests are packed onto one GPU before the next (two engines on GPU 0, two
train ranks on GPU 4 - NCCL then refuses the duplicate GPU). So colocated
train workers ask Ray for CPUs only, each pinned by a label selector to a
node where engines hold GPUs (as many workers per node as engine GPUs
there), and each rank takes the engine GPU of its local rank on its node:
one trainer per engine GPU by construction, never two ranks on one GPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from workers.types import EngineInfo

if TYPE_CHECKING:
    import torch

NODE_LABEL = "ray.io/node-id"


def engine_gpus(infos: Sequence[EngineInfo]) -> dict[str, list[int]]:
    """Node id -> the (Ray) GPU ids the engines hold on that node, sorted."""
    out: dict[str, list[int]] = {}
    for info in infos:
        out.setdefault(info.node_id, []).extend(info.gpu_ids)
    for node, ids in out.items():
        if len(set(ids)) != len(ids):
            raise ValueError(f"two engines hold the same GPU on node {node}: {sorted(ids)}")
    return {node: sorted(ids) for node, ids in sorted(out.items())}


def label_selectors(gpus: dict[str, list[int]]) -> list[dict[str, str]]:
    """One Ray Train worker per engine GPU, each pinned to the node of its GPU."""
    return [{NODE_LABEL: node} for node, ids in gpus.items() for _ in ids]


def cuda_index(ray_gpu_id: int, visible: str | None = None) -> int:
    """The CUDA device index of a GPU Ray numbers ``ray_gpu_id``, in a process Ray gave no GPU.

    Such a process sees the GPUs its raylet sees: all of them (Ray's ids are
    the CUDA indices), or those of a ``CUDA_VISIBLE_DEVICES`` the raylet was
    started with (Ray's ids are its entries).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if not visible:
        return ray_gpu_id
    entries = [v.strip() for v in visible.split(",")]
    if str(ray_gpu_id) not in entries:
        raise ValueError(f"GPU {ray_gpu_id} is not among CUDA_VISIBLE_DEVICES={visible}")
    return entries.index(str(ray_gpu_id))


def my_gpu(gpus: dict[str, list[int]], node_id: str, local_rank: int) -> int:
    """The engine GPU (Ray id) of the train rank with ``local_rank`` on ``node_id``."""
    ids = gpus.get(node_id, [])
    if local_rank >= len(ids):
        raise RuntimeError(f"train rank {local_rank} on node {node_id} has no engine GPU there (engines hold {ids})")
    return ids[local_rank]


def borrowed_gpu(borrowed_gpus: dict[str, list[int]]) -> int:
    """The engine GPU (Ray's id) a colocated train worker takes: the k-th of its node for the k-th worker there.

    Every rank calls it (a collective). Workers are counted per Ray node id,
    in world-rank order, over a gloo group: Ray Train's own local rank counts
    per IP address, which nodes sharing an address would confuse, and NCCL
    cannot be used before each rank has its device.
    """
    import ray
    import torch.distributed as dist

    node = ray.get_runtime_context().get_node_id()
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return my_gpu(borrowed_gpus, node, 0)
    nodes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node, group=dist.new_group(backend="gloo"))
    return my_gpu(borrowed_gpus, node, nodes[: dist.get_rank()].count(node))


def worker_device(borrowed_gpus: dict[str, list[int]] | None) -> torch.device:
    """This train worker's device: Ray Train's, or with colocated engines the engine GPU it borrows."""
    import ray.train.torch
    import torch

    if not borrowed_gpus:
        return ray.train.torch.get_device()
    device = torch.device("cuda", cuda_index(borrowed_gpu(borrowed_gpus)))
    torch.cuda.set_device(device)
    return device
