"""Typed values that cross Ray boundaries between the driver and the actors, and the workers' errors."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter folder served by name (vLLM multi-LoRA); None means the base model."""

    name: str
    path: str
    # sha256 of the committed folder: a re-trained adapter under the same name and path is another adapter
    # (its own vLLM LoRA id and download), never served from a cache of the old one.
    digest: str = ""


@dataclass(frozen=True)
class SamplingSpec:
    temperature: float
    top_p: float
    max_tokens: int
    # When set, decoding is constrained to this regular expression (vLLM
    # structured outputs); the text is still sampled from the model.
    regex: str | None = None


@dataclass(frozen=True)
class CompletionRequest:
    """One chat user message to complete once, with its own seed."""

    user_message: str
    seed: int


@dataclass(frozen=True)
class ChoiceRequest:
    """The model's next-token probabilities of a few one-token ``options``, read after ``line``.

    The chat-templated ``user_message``, then ``reply_prefix`` (the
    assistant's reply so far), then ``line`` (e.g. "Score:"): the returned
    distribution is the softmax of the options' logits there, renormalised
    over the options.
    """

    user_message: str
    reply_prefix: str
    line: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class Completion:
    """One sampled completion (the result type of an engine's ``complete``)."""

    text: str
    num_tokens: int
    finish_reason: str


@dataclass(frozen=True)
class ScoreRequest:
    """A (user message, response) whose response log-probability is wanted."""

    user_message: str
    response: str
    finish_reason: str


@dataclass(frozen=True)
class ScoreResult:
    """A response's summed log-probability (the result type of an engine's ``score``)."""

    logp: float
    num_tokens: int


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine needs to load the base model and serve adapters.

    No field has a default: ``orchestrator.specs.engine_spec`` derives every one from the run config.
    """

    model_path: str
    dtype: str
    max_model_len: int
    max_lora_rank: int
    seed: int
    kv_cache_gib: float
    tensor_parallel_size: int
    max_loras: int
    trust_remote_code: bool
    # GPU only: share of each GPU's memory the engine may use, and whether it
    # can sleep (release it) while a colocated trainer holds the GPUs.
    gpu_memory_utilization: float
    enable_sleep_mode: bool
    # Prefix caching lets judge prompts share the rubric's KV cache; off only to measure what it buys.
    enable_prefix_caching: bool
    # vLLM's own statistics (prefix-cache hits and the like, read with LLM.get_metrics), for benchmarks.
    log_stats: bool
    # vLLM's engine core in a process of its own (vLLM's default; off here, see workers.engines.vllm): tests use it to
    # check that no engine process outlives its actor.
    engine_core_process: bool
    # Serve an adapter by reloading the weights with its update merged in (one model at a time, at the base model's
    # speed) instead of vLLM's per-request LoRA; one device per engine and no sleep mode (see workers.engines.vllm).
    merge_adapters: bool
    # Intra-op threads of a CPU engine (GPU engines ignore it; ``resources.engine_threads``); 0: the process's own
    # setting. The engine pool gives each CPU engine its node's CPUs shared among the engines placed there
    # (``EnginePool``): stages take turns, so an engine at work has its node's CPUs to itself (two threads on two
    # cores generate 1.8x faster, the same tokens).
    threads: int


@dataclass(frozen=True)
class EngineInfo:
    """Where an engine actor runs (for logs, placement checks and fault injection)."""

    host: str
    pid: int
    node_id: str
    gpu_ids: tuple[int, ...] = ()  # the GPUs Ray gave the actor (its bundle's)
    visible_devices: str | None = None  # CUDA_VISIBLE_DEVICES as the actor sees it
    threads: int = 0  # torch's intra-op threads in the engine's process (0: not reported)

    @staticmethod
    def here() -> "EngineInfo":
        """This process's host, pid, Ray node and GPUs (empty outside Ray)."""
        import os
        import socket

        try:
            import ray

            inside = ray.is_initialized()
            node = ray.get_runtime_context().get_node_id() if inside else ""
            gpus = tuple(sorted(int(g) for g in ray.get_gpu_ids())) if inside else ()
        except ImportError:
            node, gpus = "", ()
        return EngineInfo(host=socket.gethostname(), pid=os.getpid(), node_id=node, gpu_ids=gpus,
                          visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))


class PoolError(RuntimeError):
    """The engine pool cannot be placed on the cluster (not enough resources); the message says what was asked."""


class ServedModelError(RuntimeError):
    """An engine does not serve the adapter it was asked for (its canary log-probs differ from the trainer's)."""


class TrainingError(RuntimeError):
    """A training stage failed for good (after Ray Train's retries); the message gives the workers' error."""
