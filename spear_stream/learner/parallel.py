"""Data-parallel learner on FSDP2: process group, sharding, full state dicts, grad clipping, work scatter.

The same code runs under ``torchrun`` (any world size, gloo on CPU or NCCL on GPU) and in a plain process
(:func:`init_distributed` then builds a world of 1), so the learner loop has a single code path.

Gradient scaling: ``loss_over_rows`` normalises every micro-batch by the *global* token/sequence counts, so
the full-batch gradient is the plain sum of all ranks' gradients. FSDP2 averages over ranks by default;
:func:`shard_model` switches it to a sum (divide factor 1, SUM-only collectives, which gloo also supports).

Collective lockstep: with FSDP2 every forward all-gathers parameters and every backward reduce-scatters
gradients, so all ranks must run the same number of forward/backward calls per step, in the same order.
:func:`plan_rank_work` therefore plans every rank's micro-batches on rank 0 and pads the shorter plans with
a 2-token dummy row whose loss mask is empty (zero loss, zero gradient, but the same collectives).
"""

from __future__ import annotations

import datetime
import gc
import os
import sys
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from tensordict import TensorDictBase
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from spear_stream.config import AlgoConfig, CovConfig
from spear_stream.learner.forward import micro_batches
from spear_stream.learner.step import loss_over_rows
from spear_stream.schema import make_row
from spear_stream.utils import free_port

T = TypeVar("T")

_MIXED_PRECISION_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------------------
# Process group
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_backend(backend: str) -> str:
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"learner.backend must be auto, gloo or nccl, got {backend!r}")
    return backend


def _device_for(backend: str, local_rank: int) -> torch.device:
    if backend == "nccl":
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def dist_info() -> DistInfo:
    """Describe the already-initialised default process group."""
    backend = str(dist.get_backend())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device_for(backend, local_rank)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def init_distributed(backend: str = "auto", timeout_s: float = 300.0) -> DistInfo:
    """Join the torchrun world (RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT), or make a world of 1 without torchrun.

    Idempotent: a second call returns the current group's description. The timeout bounds every collective,
    so a dead peer raises instead of hanging the run.
    """
    if dist.is_initialized():
        return dist_info()
    backend = resolve_backend(backend)
    device = _device_for(backend, int(os.environ.get("LOCAL_RANK", "0")))
    kwargs: dict = {"timeout": datetime.timedelta(seconds=timeout_s)}
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL binds each rank to its own GPU
        kwargs["device_id"] = device  # eager NCCL communicator init
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend, init_method="env://", **kwargs)
    else:
        init_method = f"tcp://127.0.0.1:{free_port()}"
        dist.init_process_group(backend, init_method=init_method, rank=0, world_size=1, **kwargs)
    return dist_info()


def destroy_distributed(*, barrier: bool = True) -> None:
    """Leave the process group; ``barrier`` first so no rank tears down connections a peer still uses.

    Pass ``barrier=False`` on error paths (a dead peer would make the barrier wait for the full timeout).
    """
    if not dist.is_initialized():
        return
    if barrier:
        dist.barrier()
    dist.destroy_process_group()
    gc.collect()  # free FSDP/DTensor cycles that still reference the group while the interpreter is alive


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


# ---------------------------------------------------------------------------------------------------------
# FSDP2 sharding and state
# ---------------------------------------------------------------------------------------------------------


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated decoder blocks: modules named in HF's ``_no_split_modules``, else ``model.model.layers``."""
    block_names = set(getattr(model, "_no_split_modules", None) or ())
    blocks: list[nn.Module] = []
    if block_names:
        inside: set[int] = set()  # only the outermost block when block classes nest
        for module in model.modules():
            if id(module) in inside or type(module).__name__ not in block_names:
                continue
            blocks.append(module)
            inside.update(id(m) for m in module.modules())
    if not blocks:
        inner = getattr(model, "model", None)
        blocks = list(getattr(inner, "layers", None) or [])
    return blocks


def tied_parameter_aliases(model: nn.Module) -> dict[str, str]:
    """``{alias: canonical}`` for parameters reachable under several names (``lm_head.weight`` -> embeddings)."""
    first_name: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first_name:
            aliases[name] = first_name[id(param)]
        else:
            first_name[id(param)] = name
    return aliases


def _mp_policy(mixed_precision: str | None) -> MixedPrecisionPolicy:
    if mixed_precision in (None, "float32"):
        return MixedPrecisionPolicy()
    if mixed_precision not in _MIXED_PRECISION_DTYPES:
        raise ValueError(f"mixed_precision must be None, float32, bfloat16, float16; got {mixed_precision!r}")
    # Compute in low precision, reduce gradients in fp32 (measured: same losses as fp32 to 4 digits).
    low = _MIXED_PRECISION_DTYPES[mixed_precision]
    return MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32)


def default_mesh() -> DeviceMesh:
    info = dist_info()
    return init_device_mesh(info.device.type, (info.world_size,), mesh_dim_names=("dp",))


def shard_model(
    model: nn.Module, mesh: DeviceMesh | None = None, mixed_precision: str | None = None
) -> nn.Module:
    """FSDP2: one ``fully_shard`` unit per decoder block, then the root (embeddings, final norm, lm_head).

    Tied embeddings stay tied because both users of the shared weight (``embed_tokens`` and ``lm_head``) live
    in the root unit, which registers the one sharded parameter on both modules; sharding either module on its
    own would break the tie, so this function never does. Gradients are summed over ranks (see module doc).
    """
    mesh = mesh or default_mesh()
    aliases_before = tied_parameter_aliases(model)
    mp_policy = _mp_policy(mixed_precision)
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mp_policy)
    fully_shard(model, mesh=mesh, mp_policy=mp_policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            # Plain SUM collectives: a custom divide factor would otherwise need PREMUL_SUM (NCCL only).
            module.set_force_sum_reduction_for_comms(True)
    if (aliases_after := tied_parameter_aliases(model)) != aliases_before:
        raise RuntimeError(f"sharding broke tied parameters: {aliases_before} -> {aliases_after}")
    return model


def full_state_dict(model: nn.Module, *, rank0_only: bool = True) -> dict[str, torch.Tensor] | None:
    """The unsharded parameters on CPU, each storage once (collective: every rank must call it).

    Tied aliases (``lm_head.weight`` when tied to ``model.embed_tokens.weight``) are dropped. A receiver that
    holds an HF model with the same config restores everything with ``model.load_state_dict(sd, strict=False)``:
    the alias is reported missing but shares the embedding's parameter, so it gets the same values. A receiver
    without a model can re-add them from :func:`tied_parameter_aliases` (``sd[alias] = sd[canonical]``).

    ``rank0_only``: only rank 0 materialises the full tensors (others get ``None``), the default for
    publishing weights; otherwise every rank gets a copy.
    """
    # cpu_offload + full_state_dict gathers shard by shard onto rank 0's CPU: no rank holds two full copies.
    options = StateDictOptions(full_state_dict=True, cpu_offload=rank0_only)
    state = get_model_state_dict(model, options=options)
    if rank0_only and _rank() != 0:
        return None
    for alias in tied_parameter_aliases(model):
        state.pop(alias, None)
    # full_state_dict=True: every value is a plain tensor here (the union type covers other options)
    return {name: tensor.detach().cpu() for name, tensor in state.items()}  # type: ignore[union-attr]


def clip_grad_norm(model: nn.Module, max_norm: float, norm_type: float = 2.0) -> float:
    """Clip the global gradient norm (over all ranks' shards) and return it; ``max_norm <= 0`` only measures.

    ``torch.nn.utils.clip_grad_norm_`` itself handles FSDP2's DTensor gradients (checked on torch 2.14: the
    clipping is right) but returns a DTensor; here the norm is reduced explicitly to one plain number that is
    identical on every rank, as torchtitan does. ``model.parameters()`` lists a tied weight once.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, norm_type=norm_type)
    if isinstance(total, DTensor):  # a Partial (per-shard) norm: all-reduce it to the global value
        total = total.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


# ---------------------------------------------------------------------------------------------------------
# Scattering a batch: rank 0 plans, every rank runs the same number of micro-batches
# ---------------------------------------------------------------------------------------------------------


def split_rows_balanced(lengths: list[int], world_size: int) -> list[list[int]]:
    """Row indices per rank with balanced token totals: longest row first to the lightest rank (deterministic).

    Ties go to the rank with fewer rows, then the lower rank; each rank's indices come back sorted.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    tokens = [0] * world_size
    assigned: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        rank = min(range(world_size), key=lambda r: (tokens[r], len(assigned[r]), r))
        assigned[rank].append(i)
        tokens[rank] += lengths[i]
    return [sorted(idx) for idx in assigned]


def plan_micro_batches(lengths: list[int], world_size: int, token_budget: int) -> list[list[list[int]]]:
    """``plan[rank][k]``: row indices of rank's k-th micro-batch; every rank gets the same number of entries.

    An empty list is a padding micro-batch (see :func:`plan_rank_work`).
    """
    plan: list[list[list[int]]] = []
    for rank_rows in split_rows_balanced(lengths, world_size):
        local = micro_batches(len(rank_rows), [lengths[i] for i in rank_rows], token_budget)
        plan.append([[rank_rows[j] for j in mb] for mb in local])
    n = max((len(p) for p in plan), default=0)
    return [p + [[] for _ in range(n - len(p))] for p in plan]


@dataclass
class MicroBatch:
    rows: list[TensorDictBase]
    advantages: torch.Tensor  # [n] float
    loss_keep: torch.Tensor  # [n] bool
    weights: torch.Tensor | None = None  # [n] prioritized-replay importance weights


@dataclass
class RankWork:
    """One rank's share of an optimizer step, with the batch-wide counts its losses are normalised by."""

    micro_batches: list[MicroBatch]
    num_tokens: int
    num_seqs: int


def padding_micro_batch() -> MicroBatch:
    """A 2-token row with no loss tokens: runs the forward/backward collectives, contributes zero gradient."""
    no, zero = [False, False], [0.0, 0.0]
    row = make_row(tokens=[0, 0], loss_mask=no, behavior_logp=zero, token_version=[-1, -1], prompt_length=1)
    return MicroBatch([row], torch.zeros(1), torch.zeros(1, dtype=torch.bool))


def plan_rank_work(
    rows: list[TensorDictBase],
    advantages: torch.Tensor,
    loss_keep: torch.Tensor,
    *,
    world_size: int,
    token_budget: int,
    num_tokens: int,
    num_seqs: int,
    weights: torch.Tensor | None = None,
) -> list[RankWork]:
    """Rank 0's side: split one optimizer step's rows into per-rank, equally long micro-batch lists."""
    plan = plan_micro_batches([int(r["length"]) for r in rows], world_size, token_budget)
    work: list[RankWork] = []
    for rank_plan in plan:
        mbs = [
            MicroBatch(
                [rows[i] for i in idx],
                advantages[idx].clone(),
                loss_keep[idx].clone(),
                None if weights is None else weights[idx].clone(),
            )
            if idx
            else padding_micro_batch()
            for idx in rank_plan
        ]
        work.append(RankWork(mbs, num_tokens, num_seqs))
    return work


def broadcast_rows(per_rank: list[T] | None, src: int = 0) -> T:
    """Scatter: ``src`` holds one item per rank (e.g. :class:`RankWork`) and each rank receives its own.

    Items travel pickled (TensorDicts pickle their tensors); other ranks pass ``None``. Without a process
    group this returns ``per_rank[0]``.
    """
    if not dist.is_initialized():
        assert per_rank is not None
        return per_rank[0]
    if _rank() == src and (per_rank is None or len(per_rank) != _world_size()):
        raise ValueError(f"broadcast_rows: rank {src} must pass one item per rank ({_world_size()})")
    received: list[T | None] = [None]
    dist.scatter_object_list(received, per_rank if _rank() == src else None, src=src)
    return received[0]  # type: ignore[return-value]


def loss_over_work(
    model: nn.Module,
    work: RankWork,
    algo: AlgoConfig,
    *,
    temperature: float,
    norm_len: int,
    cov: CovConfig,
    sil_gamma: float | None = None,
    generator: torch.Generator | None = None,
    ref_model: nn.Module | None = None,
    version: int | None = None,
) -> dict[str, float]:
    """Forward + backward of this rank's planned micro-batches (gradients accumulate; no optimizer step).

    ``sil_gamma``: the self-imitation term scaled by ``gamma(t)`` instead of the on-policy term (``loss_over_rows``).

    Returns this rank's additive metric sums; :func:`sum_across_ranks` gives the batch totals.
    """
    sums: dict[str, float] = {}
    for mb in work.micro_batches:
        # The plan already respects the token budget: an unbounded budget keeps each one a single forward.
        metrics = loss_over_rows(
            model,
            mb.rows,
            mb.advantages,
            mb.loss_keep,
            algo,
            temperature=temperature,
            norm_len=norm_len,
            token_budget=sys.maxsize,
            num_tokens=work.num_tokens,
            num_seqs=work.num_seqs,
            cov=cov,
            sil_gamma=sil_gamma,
            weights=mb.weights,
            generator=generator,
            ref_model=ref_model,
            version=version,
        )
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + value
    return sums


def sum_across_ranks(metrics: dict[str, float]) -> dict[str, float]:
    """Sum per-rank metric sums over all ranks (keys may differ between ranks); every rank gets the result."""
    if not dist.is_initialized() or _world_size() == 1:
        return dict(metrics)
    gathered: list[dict[str, float] | None] = [None] * _world_size()
    dist.all_gather_object(gathered, metrics)
    total: dict[str, float] = {}
    for part in gathered:
        for key, value in (part or {}).items():
            total[key] = total.get(key, 0.0) + value
    return total
