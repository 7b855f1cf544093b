"""The resource and memory plan of a run, before any work: GPUs per stage, their layout, memory per GPU.

``selfreward plan CONFIG [--cluster cluster.yaml]`` prints it; ``selfreward
run`` checks the same against the GPUs it finds before starting engines.
Memory is estimated from the model's ``config.json`` (parameters, layers,
heads, dtype), the LoRA rank and the batch and sequence lengths of the
config. The estimates are upper bounds of the kind a researcher would work
out by hand; where vLLM or PyTorch decide at run time (CUDA graphs, the
allocator), a fixed allowance stands in and is named in the output.

A plan is refused (``PlanError``, a ConfigError: exit 2), naming the field
to change, when the cluster has fewer GPUs than the run holds at once, a
tensor-parallel engine is wider than a node, an engine's KV cache cannot
hold one request of ``model.max_model_len`` tokens, or a training or
MC-dropout step cannot fit beside what shares its GPU.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config import ConfigError, RunConfig, parse_yaml
from orchestrator.inputs import check_input_path, os_problem
from orchestrator.models import SHAPE_FIELDS, read_model_config
from workers.engines.limits import BATCHED_TOKENS, FIXED_GIB, GPU_MEMORY_SHARE, MAX_SEQS, lora_slot_rank

LOG = logging.getLogger(__name__)
GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# What a training (or MC-dropout) process holds beyond its tensors: CUDA context, NCCL buffers, allocator slack.
TORCH_FIXED_GIB = 1.5
# What a sleeping vLLM engine still holds on its GPU (level 1: weights offloaded, KV cache freed): its CUDA context
# (~0.5 GiB), the CUDA graphs it captured, which stay resident (up to ~1.5 GiB for an 8B model at vLLM's default
# capture sizes), and allocator slack. An allowance until measured on a GPU (benchmarks/gpu_smoke.py prints it).
ASLEEP_ENGINE_GIB = 2.5


class PlanError(ConfigError):
    """The cluster cannot hold the run as configured; the message names the field to change."""


# GPUs of the AWS instance types a cluster.yaml names: (GPUs, GPU memory in GiB as torch reports it, name, vCPUs).
INSTANCE_TYPES: dict[str, tuple[int, float, str, int]] = {
    "p4d.24xlarge": (8, 39.4, "A100 40GB", 96),
    "p4de.24xlarge": (8, 79.2, "A100 80GB", 96),
    "p5.48xlarge": (8, 79.1, "H100 80GB", 192),
    "p5e.48xlarge": (8, 139.8, "H200 141GB", 192),
    "p5en.48xlarge": (8, 139.8, "H200 141GB", 192),
    "g5.xlarge": (1, 22.0, "A10G 24GB", 4),
    "g5.12xlarge": (4, 22.0, "A10G 24GB", 48),
    "g5.48xlarge": (8, 22.0, "A10G 24GB", 192),
    "g6e.12xlarge": (4, 44.4, "L40S 48GB", 48),
    "g6e.48xlarge": (8, 44.4, "L40S 48GB", 192),
}


@dataclass(frozen=True)
class ModelShape:
    """What the memory estimates need of a decoder-only transformer's ``config.json``."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str) -> "ModelShape":
        c = config.get("text_config", config)  # checked by ``read_model_config``: positive integers where present
        missing = [k for k, required in SHAPE_FIELDS.items() if required and c.get(k) is None]
        if missing:
            raise PlanError(f"{source}: the model config lacks {', '.join(missing)} (integers) for the memory plan")
        heads = c["num_attention_heads"]
        return cls(layers=c["num_hidden_layers"], hidden=c["hidden_size"], heads=heads,
                   kv_heads=c.get("num_key_value_heads") or heads, head_dim=c.get("head_dim") or c["hidden_size"] // heads,
                   intermediate=c["intermediate_size"], vocab=c["vocab_size"], tied=bool(c.get("tie_word_embeddings", False)))

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear module of one layer, by its usual name."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (self.hidden, q), "k_proj": (self.hidden, kv), "v_proj": (self.hidden, kv),
                "o_proj": (q, self.hidden), "gate_proj": (self.hidden, self.intermediate),
                "up_proj": (self.hidden, self.intermediate), "down_proj": (self.intermediate, self.hidden)}

    @property
    def layer_params(self) -> int:
        return sum(i * o for i, o in self.linears().values()) + 2 * self.hidden

    @property
    def params(self) -> int:
        embed = self.vocab * self.hidden
        return embed * (1 if self.tied else 2) + self.layers * self.layer_params + self.hidden

    def lora_params(self, rank: int, modules: tuple[str, ...] | None = None) -> int:
        """LoRA parameters of rank ``rank`` on ``modules`` (all linear modules when None)."""
        lin = self.linears()
        return self.layers * sum(rank * (i + o) for name, (i, o) in lin.items() if modules is None or name in modules)

    def kv_bytes_per_token(self, dtype_bytes: int, tp: int) -> int:
        """KV cache bytes per token on one of ``tp`` tensor-parallel GPUs (KV heads split, or replicated when fewer)."""
        return 2 * self.layers * math.ceil(self.kv_heads / tp) * self.head_dim * dtype_bytes


def model_shape(model_path: str | Path, model_config: str | Path | None = None) -> ModelShape:
    """The shape from ``model_config`` (a config.json), else from ``model_path``/config.json."""
    path = Path(model_config) if model_config else Path(model_path) / "config.json"
    check_input_path(path, "--model-config" if model_config else "model.path's config.json", PlanError)
    if model_config and not path.is_file():
        raise PlanError(f"--model-config {path}: not a file (give the model's config.json)")
    if not path.is_file():
        raise PlanError(f"{path}: no model config.json here to plan from (model.path); give one with --model-config")
    return ModelShape.from_config(read_model_config(path, PlanError), str(path))


@dataclass(frozen=True)
class Hardware:
    nodes: int
    gpus_per_node: int
    gpu_memory_gib: float
    gpu_name: str
    source: str
    started_nodes: int | None = None  # a launcher file: the GPU nodes it starts with (min_workers); the rest boot on demand

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


def cluster_hardware(path: str | Path) -> Hardware:
    """The GPU worker nodes a Ray cluster launcher YAML declares (at their ``max_workers``); PlanError naming the
    node type and field of a value Ray would not take."""
    p = Path(path)
    check_input_path(p, "--cluster", PlanError)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError(f"--cluster {path}: cannot be read ({os_problem(e) if isinstance(e, OSError) else e})") from None
    try:
        spec = parse_yaml(text, f"--cluster {path}")
    except ConfigError as e:
        raise PlanError(str(e)) from None
    types = spec.get("available_node_types") if isinstance(spec, dict) else None
    if not isinstance(types, dict):
        raise PlanError(f"--cluster {path}: no available_node_types mapping")

    def count(value: Any, field: str) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise PlanError(f"--cluster {path}: {field} must be a whole number >= 0, got {value!r}")
        return value

    top = count(spec.get("max_workers", 2**31 - 1), "max_workers")
    found: list[tuple[str, int, int, float, str, int]] = []  # name, nodes, GPUs each, GiB, GPU, nodes at start
    for name, t in types.items():
        where = f"available_node_types.{name}"
        if not isinstance(t, dict) or not isinstance(t.get("node_config") or {}, dict) \
                or not isinstance(t.get("resources") or {}, dict):
            raise PlanError(f"--cluster {path}: {where} is not a node type Ray reads (a mapping with node_config "
                            "and resources mappings)")
        itype = (t.get("node_config") or {}).get("InstanceType")
        known = INSTANCE_TYPES.get(itype) if isinstance(itype, str) else None
        gpus = count((t.get("resources") or {}).get("GPU", known[0] if known else 0), f"{where}.resources.GPU")
        workers = min(count(t.get("max_workers", 1), f"{where}.max_workers"), top)
        at_start = min(count(t.get("min_workers", 0), f"{where}.min_workers"), workers)
        if not gpus:
            continue
        if known is None:
            raise PlanError(f"--cluster {path}: {where}: instance type {itype!r} has GPUs whose "
                            f"memory this plan does not know; known: {', '.join(sorted(INSTANCE_TYPES))}")
        found.append((name, workers, gpus, known[1], known[2], at_start))
    if not found:
        raise PlanError(f"--cluster {path}: no node type with GPUs")
    if len({(f[2], f[3]) for f in found}) > 1:
        raise PlanError(f"--cluster {path}: node types with different GPUs ({', '.join(f[0] for f in found)}): "
                        "the plan assumes one kind")
    _, _, gpus, mem, gpu_name, _ = found[0]
    return Hardware(sum(f[1] for f in found), gpus, mem, gpu_name, f"{path}: {', '.join(f'{f[0]} x{f[1]}' for f in found)}",
                    started_nodes=sum(f[5] for f in found))


def local_hardware() -> Hardware:
    """This machine's GPUs (none: 0)."""
    import torch

    n = torch.cuda.device_count()
    if n == 0:
        return Hardware(1, 0, 0.0, "none", "this machine (no GPU)")
    props = torch.cuda.get_device_properties(0)
    return Hardware(1, n, props.total_memory / GIB, props.name, "this machine")


# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    what: str
    gib: float


@dataclass(frozen=True)
class Budget:
    """One process's memory on one GPU: its parts, and the room it has."""

    title: str
    parts: tuple[Line, ...]
    room_gib: float
    room_why: str

    @property
    def total(self) -> float:
        return sum(p.gib for p in self.parts)

    @property
    def fits(self) -> bool:
        return self.total <= self.room_gib


@dataclass(frozen=True)
class Plan:
    cfg: RunConfig
    shape: ModelShape
    hw: Hardware
    stages: tuple[tuple[str, int, str], ...]  # stage, GPUs held, by whom
    gpus_needed: int
    layout: tuple[str, ...]
    kv_tokens: int | None
    budgets: tuple[Budget, ...]
    problems: tuple[str, ...]

    def check(self) -> None:
        if self.problems:
            raise PlanError("the cluster cannot hold this run:\n  " + "\n  ".join(self.problems))

    def text(self) -> str:
        s = self.shape
        b = DTYPE_BYTES[self.cfg.model.dtype]
        out = [f"model: {s.params / 1e9:.2f}B parameters ({s.layers} layers, hidden {s.hidden}, {s.heads} heads / "
               f"{s.kv_heads} KV heads, vocab {s.vocab}), {self.cfg.model.dtype}: {s.params * b / GIB:.1f} GiB of weights",
               f"hardware: {self.hw.source}: {self.hw.nodes} node(s) x {self.hw.gpus_per_node} GPU(s)"
               + (f" of {self.hw.gpu_memory_gib:.1f} GiB ({self.hw.gpu_name})" if self.hw.gpus_per_node else ""),
               "", "GPUs held per stage:"]
        out += [f"  {stage:<10} {n:>3}  {who}" for stage, n, who in self.stages]
        out += [f"  at once    {self.gpus_needed:>3}  (the cluster has {self.hw.gpus})"]
        out += self._autoscaling()
        out += ["", "placement:"]
        out += [f"  {line}" for line in self.layout]
        if self.budgets:
            out += ["", "memory per GPU (GiB, estimates):"]
        for bud in self.budgets:
            out.append(f"  {bud.title}: {bud.total:.1f} of {bud.room_gib:.1f} ({bud.room_why})"
                       + ("" if bud.fits else "  DOES NOT FIT"))
            out += [f"    {p.what:<72} {p.gib:7.2f}" for p in bud.parts]
        if self.kv_tokens is not None:
            per = self.cfg.model.max_model_len
            out += ["", f"KV cache per engine: {self.kv_tokens:,} tokens = {self.kv_tokens / per:.1f} requests of "
                        f"model.max_model_len={per} at once (vLLM refuses to start below 1)"]
        out += ["", "plan: " + ("fits" if not self.problems else "REFUSED")] + [f"  {p}" for p in self.problems]
        return "\n".join(out)


    def _autoscaling(self) -> list[str]:
        """Where the cluster starts with fewer GPU nodes than the run needs: the engines wait for the rest to boot."""
        hw, per = self.hw, max(1, self.hw.gpus_per_node)
        if hw.started_nodes is None or not self.gpus_needed or self.gpus_needed <= hw.started_nodes * per:
            return []
        need = math.ceil(self.gpus_needed / per)
        wait = self.cfg.resources.placement_timeout_s
        return [f"  autoscaling: the cluster starts with {hw.started_nodes} GPU node(s) (min_workers); the run needs "
                f"{need}: the engines wait for {need - hw.started_nodes} more to boot and run setup_commands (a p4d: "
                f"10-20 minutes), up to resources.placement_timeout_s={wait:g}s, showing their progress"]


def engine_memory_utilization(cfg: RunConfig) -> float:
    """The share of its GPU(s) a vLLM engine may take (``gpu_memory_utilization``)."""
    r = cfg.resources
    return r.colocate_engine_gpu_fraction * GPU_MEMORY_SHARE if r.colocate else GPU_MEMORY_SHARE


def _pair_tokens(cfg: RunConfig) -> int:
    """The longest packed training pair (prompt, chosen, rejected): a prompt fits the context with its response."""
    return cfg.model.max_model_len + cfg.generation.max_tokens


def cpus_at_once(cfg: RunConfig) -> float:
    """The most CPUs the run's engines and train workers hold at one time. Colocated CPU engines shut down while the
    trainer runs; colocated GPU engines sleep holding their bundles' CPUs, and the train workers borrowing their
    GPUs ask for CPUs of their own (``workers.training.placement``)."""
    r = cfg.resources
    engine_cpus, train_cpus = r.engines * r.cpus_per_engine, r.train_workers * r.cpus_per_train_worker
    return max(engine_cpus, train_cpus) if r.colocate and not r.gpus_per_engine else engine_cpus + train_cpus


def stage_gpus(cfg: RunConfig) -> tuple[tuple[str, int, str], ...]:
    """(stage, GPUs held during it, by whom) for every stage of an iteration."""
    r = cfg.resources
    engine_gpus, train_gpus = r.engines * r.gpus_per_engine, r.train_workers * r.gpus_per_train_worker
    mc = cfg.selection.mc_dropout.passes > 0
    mc_gpus = r.gpus_per_train_worker if mc else 0
    engines_who = f"{r.engines} engine(s) x {r.gpus_per_engine} GPU(s)" if engine_gpus else f"{r.engines} CPU engine(s)"
    if r.colocate and engine_gpus:
        train_who = f"{r.train_workers} train worker(s), on the engines' GPUs (engines asleep)"
        train_held = max(engine_gpus, train_gpus)
        mc_held = engine_gpus
        mc_who = f"{engines_who}; MC-dropout on engine 0's GPU while the engines sleep (as for training)"
    else:
        train_who = (f"{r.train_workers} train worker(s) x {r.gpus_per_train_worker} GPU(s)" if train_gpus else
                     f"{r.train_workers} CPU train worker(s)") + (f" + {engines_who} holding theirs" if engine_gpus else "")
        train_held = engine_gpus + train_gpus
        mc_held = engine_gpus + mc_gpus
        mc_who = engines_who + (f" + MC-dropout on {mc_gpus} GPU(s)" if mc_gpus else "")
    off = "; MC-dropout off (selection.mc_dropout.passes=0)"
    return (("generate", engine_gpus, engines_who), ("judge", engine_gpus, engines_who),
            ("score", mc_held if mc else engine_gpus, mc_who if mc else engines_who + off), ("train", train_held, train_who))


def make_plan(cfg: RunConfig, shape: ModelShape, hw: Hardware, count: bool = True) -> Plan:
    """The plan of ``cfg`` on ``hw``; ``count=False`` leaves the cluster's GPU count unchecked (autoscaling)."""
    r, b = cfg.resources, DTYPE_BYTES[cfg.model.dtype]
    tp = max(1, r.gpus_per_engine)
    engine_gpus, train_gpus = r.engines * r.gpus_per_engine, r.train_workers * r.gpus_per_train_worker
    mc = cfg.selection.mc_dropout.passes > 0
    problems: list[str] = []
    stages = stage_gpus(cfg)
    needed = max(n for _, n, _ in stages)
    if count and needed > hw.gpus:
        problems.append(f"resources.engines / resources.train_workers / resources.colocate: the run holds {needed} "
                        f"GPUs at once; {hw.source} has {hw.gpus}")
    if engine_gpus and tp > hw.gpus_per_node:
        problems.append(f"resources.gpus_per_engine={tp}: a tensor-parallel engine lives on one node, which has "
                        f"{hw.gpus_per_node} GPUs")
    layout = _layout(cfg, hw)

    budgets: list[Budget] = []
    kv_tokens: int | None = None
    kv_per_token = shape.kv_bytes_per_token(b, tp)
    if engine_gpus:
        util = engine_memory_utilization(cfg)
        room = util * hw.gpu_memory_gib
        max_rank = lora_slot_rank(cfg.lora.rank)
        act = BATCHED_TOKENS * (2 * shape.intermediate + 4 * shape.hidden + (shape.heads + 2 * shape.kv_heads)
                                     * shape.head_dim) * b / tp + MAX_SEQS * shape.vocab * 4 * 2
        parts = [Line(f"weights ({shape.params / 1e9:.2f}B / tp {tp})", shape.params * b / tp / GIB),
                 Line(f"LoRA slots (2 x rank {max_rank}, every linear layer)", 2 * shape.lora_params(max_rank) * b / tp / GIB),
                 Line(f"activations ({BATCHED_TOKENS} batched tokens) and sampler", act / GIB),
                 Line("CUDA context and graphs (allowance)", FIXED_GIB)]
        kv = room - sum(p.gib for p in parts)
        kv_tokens = max(0, int(kv * GIB // kv_per_token))
        parts.append(Line(f"KV cache ({kv_per_token / 1024:.0f} KiB per token): the rest", max(0.0, kv)))
        budgets.append(Budget("engine", tuple(parts), room, f"gpu_memory_utilization {util:.2f} of "
                              f"{hw.gpu_memory_gib:.1f}"))
        if kv_tokens < cfg.model.max_model_len:
            field = "resources.colocate_engine_gpu_fraction" if r.colocate else "resources.gpus_per_engine"
            problems.append(f"{field}: each engine's KV cache holds {kv_tokens} tokens, less than one request of "
                            f"model.max_model_len={cfg.model.max_model_len}")
    else:
        gib = max(1, int(round(r.kv_cache_gib)))  # vLLM's CPU KV cache is whole GiB (workers.engines.vllm)
        kv_tokens = int(gib * GIB // kv_per_token)
        if kv_tokens < cfg.model.max_model_len:
            problems.append(f"resources.kv_cache_gib={r.kv_cache_gib:g}: {gib} GiB hold {kv_tokens} tokens, less than "
                            f"one request of model.max_model_len={cfg.model.max_model_len}")

    if train_gpus:
        steps = [(_train_budget(cfg, shape, hw), "dpo.micro_batch_pairs / resources.gradient_checkpointing / "
                  "resources.train_strategy: a train step")]
        if mc:
            steps.append((_mc_budget(cfg, shape, hw), "selection.mc_dropout / resources.colocate_engine_gpu_fraction: "
                          "MC-dropout"))
        for bud, what in steps:
            budgets.append(bud)
            if not bud.fits:
                problems.append(f"{what} needs {bud.total:.1f} GiB of the {bud.room_gib:.1f} GiB its GPU leaves")
    return Plan(cfg, shape, hw, stages, needed, tuple(layout), kv_tokens, tuple(budgets), tuple(problems))


def _train_budget(cfg: RunConfig, shape: ModelShape, hw: Hardware) -> Budget:
    r, b, d = cfg.resources, DTYPE_BYTES[cfg.model.dtype], cfg.dpo
    world = r.train_workers * r.gpus_per_train_worker
    fsdp = r.train_strategy == "fsdp" and world > 1
    tokens = d.micro_batch_pairs * _pair_tokens(cfg)
    responses = d.micro_batch_pairs * 2 * cfg.generation.max_tokens
    lora = shape.lora_params(cfg.lora.rank, tuple(cfg.lora.target_modules))
    per_token_layer = (12 * shape.hidden + 4 * shape.intermediate) * b  # what a layer keeps for backward, per token
    if r.gradient_checkpointing:
        act = Line("activations: each layer's input + one layer recomputed (checkpointing)",
                   tokens * (shape.layers * shape.hidden * b + per_token_layer) / GIB)
    else:
        act = Line("activations kept for backward (no checkpointing)", tokens * shape.layers * per_token_layer / GIB)
    parts = [Line("weights" + (f" (FSDP: 1/{world}, plus one layer gathered)" if fsdp else " (a full replica)"),
                  (shape.params / world + shape.layer_params if fsdp else shape.params) * b / GIB),
             Line(f"LoRA rank {cfg.lora.rank}: weights, gradients, 2 AdamW states", 4 * lora * b / (world if fsdp else 1) / GIB),
             act,
             Line(f"logits and their gradient ({tokens} tokens x vocab {shape.vocab})", 2 * tokens * shape.vocab * b / GIB),
             Line(f"float32 log-softmax of {responses} response tokens", 2 * responses * shape.vocab * 4 / GIB),
             Line("4-D attention mask of the packed pairs", d.micro_batch_pairs * _pair_tokens(cfg) ** 2 * b / GIB),
             Line("CUDA context, NCCL, allocator (allowance)", TORCH_FIXED_GIB)]
    room, why = hw.gpu_memory_gib, f"the GPU's {hw.gpu_memory_gib:.1f}"
    if r.colocate and r.gpus_per_engine:
        room -= ASLEEP_ENGINE_GIB
        why += f" less {ASLEEP_ENGINE_GIB:g} a sleeping engine keeps"
    return Budget(f"train worker ({r.train_strategy}, micro_batch_pairs {d.micro_batch_pairs}, "
                  f"{_pair_tokens(cfg)} tokens per pair at most)", tuple(parts), room, why)


def _mc_budget(cfg: RunConfig, shape: ModelShape, hw: Hardware) -> Budget:
    r, b = cfg.resources, DTYPE_BYTES[cfg.model.dtype]
    chunk = 2 * cfg.dpo.micro_batch_pairs  # sequences per forward pass (workers.training.mc_dropout)
    seq = cfg.model.max_model_len
    parts = (Line("weights (a full copy, inference)", shape.params * b / GIB),
             Line(f"logits of {chunk} sequences of {seq} tokens", chunk * seq * shape.vocab * b / GIB),
             Line("CUDA context (allowance)", TORCH_FIXED_GIB))
    if r.colocate and r.gpus_per_engine:
        # In the engines' sleep window (``StageEngines.mc_dropout``): beside an awake 8B engine a copy of the model
        # does not fit (9.3 GiB left of a 40 GiB GPU at colocate_engine_gpu_fraction 0.85, for 16.5 GiB).
        room, why = hw.gpu_memory_gib - ASLEEP_ENGINE_GIB, (f"the GPU's {hw.gpu_memory_gib:.1f} less "
                                                            f"{ASLEEP_ENGINE_GIB:g} a sleeping engine keeps")
    else:
        room, why = hw.gpu_memory_gib, f"the GPU's {hw.gpu_memory_gib:.1f}"
    return Budget("MC-dropout (score stage)", parts, room, why)


def _layout(cfg: RunConfig, hw: Hardware) -> list[str]:
    """Where engines and train workers sit: one placement-group bundle of whole GPUs per engine."""
    r = cfg.resources
    if not (r.gpus_per_engine or r.gpus_per_train_worker):
        return [f"{r.engines} engine(s) x {r.cpus_per_engine:g} CPU, {r.train_workers} train worker(s) x "
                f"{r.cpus_per_train_worker:g} CPU (no GPU)"]
    per_node = max(1, hw.gpus_per_node)
    lines = []
    if r.gpus_per_engine:
        engines_per_node = max(1, per_node // r.gpus_per_engine)
        nodes = math.ceil(r.engines / engines_per_node)
        lines.append(f"engines: {r.engines} bundle(s) of {r.gpus_per_engine} whole GPU(s) ({r.placement_strategy}), "
                     f"{min(r.engines, engines_per_node)} per node on {nodes} node(s)"
                     + (", tensor parallel on vLLM's multiprocessing executor inside its bundle" if r.gpus_per_engine > 1 else ""))
    if r.gpus_per_train_worker:
        if r.colocate and r.gpus_per_engine:
            lines.append(f"train workers: {r.train_workers}, one on each engine GPU (the k-th worker on a "
                         "node takes the k-th engine GPU there), while the engines sleep")
        else:
            lines.append(f"train workers: {r.train_workers} x {r.gpus_per_train_worker} GPU(s) of their own")
    return lines


def _gpu_memory() -> tuple[str, float] | None:
    """(name, GiB) of the GPU this task was given; None where torch sees no CUDA device (fake GPUs)."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return props.name, props.total_memory / GIB


def check_on_cluster(cfg: RunConfig, model_path: str | Path, timeout_s: float = 300.0,
                     probe: Any = _gpu_memory) -> None:
    """Before engines start on GPUs: the plan's memory checks against a GPU of the joined cluster.

    One GPU is probed by a short Ray task (``probe``: what it runs); the GPU
    count is not checked here (an autoscaling cluster adds nodes on demand;
    a local Ray's count is checked before it starts). Raises PlanError
    naming the field.
    """
    r = cfg.resources
    if not (r.gpus_per_engine or r.gpus_per_train_worker):
        return
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU")]
    task = ray.remote(num_gpus=1, num_cpus=0)(probe).remote()
    ready, _ = ray.wait([task], timeout=timeout_s)
    found = ray.get(ready[0]) if ready else None
    if not ready:
        ray.cancel(task, force=True)
    if found is None:
        LOG.warning(f"  plan: GPU memory not measured ({'no GPU answered within ' + str(int(timeout_s)) + 's' if not ready else 'no CUDA device'}); "
            "memory not checked")
        return
    per_node = max((int(n["Resources"]["GPU"]) for n in nodes), default=1)
    hw = Hardware(max(1, len(nodes)), per_node, found[1], found[0], "the Ray cluster")
    plan = make_plan(cfg, model_shape(model_path), hw, count=False)
    if plan.problems:
        raise PlanError("the cluster's GPUs cannot hold this run (`selfreward plan` shows the estimate):\n  "
                        + "\n  ".join(plan.problems))
    LOG.info(f"  plan: fits {found[0]} ({found[1]:.1f} GiB)"
        + (f", KV cache {plan.kv_tokens:,} tokens per engine" if plan.kv_tokens is not None else ""))

