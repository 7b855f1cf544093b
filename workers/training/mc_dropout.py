"""MC-dropout scoring for the uncertainty filter (UPO-style): T dropout passes of the policy, and the reference
scored by the same code without dropout."""

from __future__ import annotations

import os
from typing import Any

import torch

from workers.handover import GpuProcess, this_process
from workers.progress import reporter
from workers.storage import local_copy
from workers.tokens import prompt_token_ids, response_token_ids
from workers.training.placement import cuda_index
from workers.training.trainer import DPOTrainerCore, TrainSpec
from workers.types import AdapterRef, ScoreRequest


def mc_dropout_logprobs(spec: TrainSpec, requests: list[ScoreRequest], passes: int, p: float, progress: Any = None,
                        reference: AdapterRef | None = None, device: str = "cpu",
                        borrowed_gpu: int | None = None) -> tuple[list[list[float]], list[float]]:
    """Summed response log-probs of each request under ``passes`` MC-dropout passes of the policy, and under the
    reference computed by the same model code without dropout.

    The policy is the base model with ``spec.init_adapter`` (the base alone
    when None); the reference is the base model (``reference`` None: the
    adapter disabled) or the adapter ``reference``.
    Llama-family models have no dropout layers of their own, so dropout with
    rate ``p`` is applied to every decoder layer's output (the residual
    stream each layer hands to the next, ``decoder_layers``): the noise then
    passes through the rest of the network, where the model's uncertainty
    lives, instead of perturbing the LM head's input alone. Pass t is seeded
    with ``spec.seed + t``, so results are reproducible.
    Everything else runs in eval mode. ``progress``: a queue of
    ``workers.progress`` (one message per scored chunk). ``device``: where
    it runs ("cuda": the GPU Ray gave the task); ``borrowed_gpu``: the Ray id
    of an engine's GPU it runs on instead (the task holds none).
    """
    torch.set_num_threads(spec.torch_threads or os.cpu_count() or 1)
    if borrowed_gpu is not None:
        device = f"cuda:{cuda_index(borrowed_gpu)}"
    core = DPOTrainerCore(spec, device)
    core.model.eval()
    seqs = [
        (prompt_token_ids(core.tokenizer, r.user_message), response_token_ids(core.tokenizer, r.response, r.finish_reason))
        for r in requests
    ]
    chunk = max(1, 2 * spec.micro_batch_pairs)
    report = reporter(progress)
    report({"total": (passes + 1) * len(seqs), "unit": "seq"})

    def score_all(label: Any) -> list[float]:
        out: list[float] = []
        for i in range(0, len(seqs), chunk):
            part = seqs[i : i + chunk]
            out += [float(v) for v in core.sequence_logprobs(core.model, part).tolist()]
            report({"n": len(part), "tokens": sum(len(a) + len(b) for a, b in part), "pass": label})
        return out

    with torch.no_grad():
        if reference is None:
            with core.model.disable_adapter():
                reference_logps = score_all("reference")
        else:
            core.model.load_adapter(local_copy(reference.path, reference.digest), adapter_name="reference")
            core.model.set_adapter("reference")
            reference_logps = score_all("reference")
            core.model.set_adapter("default")
        hooks = [layer.register_forward_hook(_dropout_hook(p)) for layer in decoder_layers(core.model)]
        try:
            by_pass = []
            for t in range(passes):
                torch.manual_seed(spec.seed + t)  # seeds the CUDA generators too
                by_pass.append(score_all(t + 1))
        finally:
            for hook in hooks:
                hook.remove()
    return [list(row) for row in zip(*by_pass)] if by_pass else [[] for _ in seqs], reference_logps


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's stack of decoder layers: the ModuleList holding ``config.num_hidden_layers`` blocks."""
    config = getattr(model, "config", None)
    count = getattr(getattr(config, "text_config", config), "num_hidden_layers", None)
    for _name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"no stack of {count} decoder layers found in {type(model).__name__}")


def _dropout_hook(p: float) -> Any:
    """A forward hook that applies dropout of rate ``p`` to a decoder layer's hidden-state output."""

    def hook(_module: torch.nn.Module, _args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (torch.nn.functional.dropout(output[0], p, training=True), *output[1:])
        return torch.nn.functional.dropout(output, p, training=True)

    return hook


def mc_dropout_task(spec: TrainSpec, requests: list[ScoreRequest], passes: int, p: float, progress: Any = None,
                    reference: AdapterRef | None = None, device: str = "cpu",
                    borrowed_gpu: int | None = None) -> tuple[list[list[float]], list[float], GpuProcess]:
    """``mc_dropout_logprobs`` as the Ray task runs it: with the process that ran it, for the hand-over
    (``workers.handover``)."""
    passes_, ref = mc_dropout_logprobs(spec, requests, passes, p, progress, reference, device, borrowed_gpu)
    return passes_, ref, this_process("MC-dropout", borrowed_gpu)
