"""Transformers fallback engine: the ``VLLMEngine`` methods on a plain Hugging Face model.

For machines without vLLM (``resources.engine_backend: hf``): it samples
completions with its own batched decode loop over the model's KV cache,
reads next-token probabilities of a few options (judge scores, pairwise
verdicts) and scores log-probs. Each request keeps its
own seed (one ``torch.Generator`` per row), so a request's sample does not
depend on what else is in its batch. LoRA adapters load by name with PEFT
and are switched per call; at most ``max_loras`` stay loaded. It runs on one
device (a GPU when Ray gives the actor one, else the CPU) and has no
structured outputs, tensor parallelism or prefix cache: vLLM is the engine
for throughput, this one for portability.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from workers.engines.choices import choice_token_ids, renormalise
from workers.handover import SleepMemory, nvml_probe
from workers.storage import local_copy
from workers.tokens import prompt_token_ids, response_token_ids
from workers.training import canaries
from workers.training.logprobs import sequence_logprobs
from workers.types import (
    AdapterRef,
    ChoiceRequest,
    Completion,
    CompletionRequest,
    EngineInfo,
    EngineSpec,
    SamplingSpec,
    ScoreRequest,
    ScoreResult,
)


class HFEngine:
    """A causal LM from ``spec.model_path`` with LoRA adapters served by name.

    ``batch_size``: requests decoded together (rows of one forward pass).
    """

    def __init__(self, spec: EngineSpec, batch_size: int = 64) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if spec.tensor_parallel_size > 1:
            raise ValueError(f"the HF engine runs on one device; tensor_parallel_size={spec.tensor_parallel_size} "
                             "needs the vLLM engine")
        self.spec = spec
        self.batch_size = batch_size
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu" and spec.threads:
            torch.set_num_threads(spec.threads)
        torch.manual_seed(spec.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(spec.model_path, trust_remote_code=spec.trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            spec.model_path, dtype=spec.dtype, trust_remote_code=spec.trust_remote_code
        ).to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.stop_ids = sorted({*eos, *([self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else [])})
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.peft: Any = None  # the PeftModel wrapping self.model once an adapter is loaded
        self._loaded: dict[str, AdapterRef] = {}  # adapter name -> the adapter loaded under it, oldest first
        self._asleep = False
        self._memory = SleepMemory(1, nvml_probe() if self.device.type == "cuda" else None)

    def ready(self) -> EngineInfo:
        """Where the engine runs and its threads, once it is loaded (the pool waits on this)."""
        import torch

        return dataclasses.replace(EngineInfo.here(), threads=torch.get_num_threads())

    def sleep(self) -> None:
        """Move the weights to host memory while a colocated trainer holds the GPU (RuntimeError on CPU)."""
        if self.device.type != "cuda":
            raise RuntimeError("engine sleep needs a GPU engine")

        def release() -> None:
            self.model.to("cpu")
            torch.cuda.empty_cache()

        self._memory.sleep(release)
        self._asleep = True

    def wake(self, timeout_s: float = 300.0) -> float:
        """After ``sleep``: wait until the GPU has free what the engine released (``workers.handover``), move the
        weights back, then prove every loaded adapter again (ServedModelError when one differs); the seconds spent
        proving."""
        if self._asleep:
            self._memory.wait(timeout_s)
            self.model.to(self.device)
            self._asleep = False
        return self.reprove()

    def reprove(self) -> float:
        """Check the canaries of every loaded adapter again (ServedModelError when one differs); the seconds it took."""
        import time

        t0 = time.monotonic()
        for name, adapter in list(self._loaded.items()):
            self.peft.set_adapter(name)
            canaries.prove(adapter, local_copy(adapter.path, adapter.digest),
                           lambda requests: self._score_with(self.peft, requests))
        return time.monotonic() - t0

    def close(self) -> None:
        self.peft = self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # --- adapters -------------------------------------------------------------
    @contextlib.contextmanager
    def _using(self, adapter: AdapterRef | None) -> Iterator[torch.nn.Module]:
        """The model with ``adapter`` active (None: the base model)."""
        if adapter is None:
            with self.peft.disable_adapter() if self.peft is not None else contextlib.nullcontext():
                yield self.model
            return
        if self._loaded.get(adapter.name) != adapter:
            from peft import PeftModel

            if adapter.name in self._loaded:
                self.peft.delete_adapter(adapter.name)
                del self._loaded[adapter.name]
            folder = local_copy(adapter.path, adapter.digest)
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.model, folder, adapter_name=adapter.name)
            else:
                self.peft.load_adapter(folder, adapter_name=adapter.name)
            self.peft.eval()
            self.peft.set_adapter(adapter.name)
            try:  # checked before first use, as the vLLM engine does
                canaries.prove(adapter, folder, lambda requests: self._score_with(self.peft, requests))
            except Exception:
                self.peft.delete_adapter(adapter.name)
                raise
            self._loaded[adapter.name] = adapter
            while len(self._loaded) > self.spec.max_loras:
                oldest = next(n for n in self._loaded if n != adapter.name)
                self.peft.delete_adapter(oldest)
                del self._loaded[oldest]
        self.peft.set_adapter(adapter.name)
        yield self.peft

    def _check_length(self, n: int, extra: int) -> None:
        if n + extra > self.spec.max_model_len:
            raise ValueError(f"a prompt of {n} tokens plus {extra} more exceeds max_model_len={self.spec.max_model_len}")

    def _left_padded(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, attention mask, position ids) of ``seqs`` padded on the left, so every row's next token lands in
        the last column; on the engine's device."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, width - len(s):] = torch.tensor(s)
            mask[r, width - len(s):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)

    # --- generation -----------------------------------------------------------
    @torch.no_grad()
    def complete(self, requests: list[CompletionRequest], sampling: SamplingSpec,
                 adapter: AdapterRef | None) -> list[Completion]:
        """Sample one completion per request (chat template applied, per-request seed)."""
        if sampling.regex:
            raise ValueError("the HF engine does not constrain decoding to a regex: constrained judging "
                             "(judge.constrained) needs the vLLM engine")
        prompts = [prompt_token_ids(self.tokenizer, r.user_message) for r in requests]
        out: list[Completion] = []
        with self._using(adapter) as model:
            for i in range(0, len(prompts), self.batch_size):
                out += self._decode(model, prompts[i : i + self.batch_size],
                                    [r.seed for r in requests[i : i + self.batch_size]], sampling)
        return out

    def _decode(self, model: torch.nn.Module, prompts: list[list[int]], seeds: list[int],
                sampling: SamplingSpec) -> list[Completion]:
        from transformers import DynamicCache

        for p in prompts:
            self._check_length(len(p), sampling.max_tokens)
        b = len(prompts)
        ids, mask, pos = self._left_padded(prompts)
        gens = [torch.Generator(self.device).manual_seed(s) for s in seeds]
        stop = torch.tensor(self.stop_ids, device=self.device)
        tokens: list[list[int]] = [[] for _ in range(b)]
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        cache = DynamicCache()
        for _ in range(sampling.max_tokens):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                           use_cache=True).logits[:, -1].float()
            nxt = self._sample(logits, sampling, gens)
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
            for r, t in enumerate(nxt.tolist()):
                if not done[r]:
                    tokens[r].append(t)
            done |= torch.isin(nxt, stop)
            if bool(done.all()):
                break
            ids, pos = nxt.unsqueeze(1), pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=self.device)], dim=1)
        return [Completion(text=self.tokenizer.decode(t, skip_special_tokens=True), num_tokens=len(t),
                           finish_reason="stop" if t and t[-1] in self.stop_ids else "length") for t in tokens]

    @staticmethod
    def _sample(logits: torch.Tensor, sampling: SamplingSpec, gens: list[torch.Generator]) -> torch.Tensor:
        """One token per row: greedy at temperature 0, else temperature and nucleus (top-p) sampling, row r
        drawing from its own generator."""
        if sampling.temperature == 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            # Keep the smallest set of tokens whose mass reaches top_p (always at least the top one).
            drop = sorted_p.cumsum(-1) - sorted_p >= sampling.top_p
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
        return torch.cat([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(gens)])

    # --- judging and scoring --------------------------------------------------
    @torch.no_grad()
    def choice_distribution(self, requests: list[ChoiceRequest], adapter: AdapterRef | None) -> list[list[float]]:
        """Per request, the probabilities of its one-token options after its line (see ``ChoiceRequest``)."""
        seqs, option_ids = [], []
        for r in requests:
            line, options = choice_token_ids(self.tokenizer, r.line, r.options)
            prefix = list(self.tokenizer(r.reply_prefix, add_special_tokens=False).input_ids) if r.reply_prefix else []
            seqs.append(prompt_token_ids(self.tokenizer, r.user_message) + prefix + line)
            option_ids.append(options)
        out: list[list[float]] = []
        with self._using(adapter) as model:
            for i in range(0, len(seqs), self.batch_size):
                chunk = seqs[i : i + self.batch_size]
                for s in chunk:
                    self._check_length(len(s), 0)
                ids, mask, pos = self._left_padded(chunk)
                # A plain left-padded pass with its own mask; no KV cache is built for a one-step read.
                logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1]
                logp = torch.log_softmax(logits.float(), -1)
                out += [renormalise(logp[r, option_ids[i + r]].tolist()) for r in range(len(chunk))]
        return out

    @torch.no_grad()
    def score(self, requests: list[ScoreRequest], adapter: AdapterRef | None) -> list[ScoreResult]:
        """Summed log-prob of each response given its prompt, under ``adapter`` (None = base)."""
        with self._using(adapter) as model:
            return self._score_with(model, requests)

    @torch.no_grad()
    def _score_with(self, model: torch.nn.Module, requests: list[ScoreRequest]) -> list[ScoreResult]:
        encoded = [(prompt_token_ids(self.tokenizer, r.user_message),
                    response_token_ids(self.tokenizer, r.response, r.finish_reason)) for r in requests]
        for p, y in encoded:
            self._check_length(len(p), len(y))
        logps: list[float] = []
        for i in range(0, len(encoded), self.batch_size):
            logps += sequence_logprobs(model, encoded[i : i + self.batch_size], self.device, self.pad_id).tolist()
        return [ScoreResult(logp=lp, num_tokens=len(y)) for lp, (_, y) in zip(logps, encoded)]
