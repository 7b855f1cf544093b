"""vLLM inference engine: one base model, LoRA adapters served by name.

``VLLMEngine`` is a plain object (tests and benchmarks use it without Ray);
``workers.engines.pool`` runs it inside Ray actors. The same engine samples
responses, samples judge verdicts and scores log-probs, so the base model
loads once per actor.

An adapter is served in one of two ways (``EngineSpec.merge_adapters``):
merged, the engine reloads its weights in place with the adapter's update
added in (``merged_weights``) whenever a call asks for another model than the
one it holds, so every call runs at the base model's speed; or by vLLM's
multi-LoRA, which applies the adapter per request (on CPU its kernels decode
2.7x slower than a merged adapter, and mis-shape batched prompt log-probs).
The loop asks for one model per call, so merged engines reload a few times
per stage at most (about a second each for the bundled model on 2 cores).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from workers.engines import reaper
from workers.engines.choices import choice_token_ids, renormalise
from workers.engines.limits import BATCHED_TOKENS
from workers.handover import SleepMemory, nvml_probe
from workers.merge import merged_weights
from workers.storage import local_copy
from workers.tokens import prompt_token_ids, response_token_ids
from workers.training import canaries
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

_PARTLY_RELOADED = object()  # what a merged engine holds while a reload runs, or after one failed

class VLLMEngine:
    """A vLLM ``LLM`` with prefix caching on, serving adapters merged or by multi-LoRA.

    Assumes ``spec.model_path`` is a local Hugging Face folder with a chat
    template. On CPU the KV cache is bounded by ``spec.kv_cache_gib``, since
    vLLM's CPU build otherwise reserves most of the machine's memory.
    """

    def __init__(self, spec: EngineSpec) -> None:
        # The config is the one knob for the CPU KV cache (whole GiB).
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, int(round(spec.kv_cache_gib))))
        # An engine lives on one node (tensor parallel inside one bundle), so
        # its internal message queues stay on loopback.
        os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from vllm import LLM
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        if on_cpu and spec.threads:
            import torch

            torch.set_num_threads(spec.threads)  # before vLLM starts: it refuses later changes
        if spec.merge_adapters and (spec.tensor_parallel_size > 1 or spec.enable_sleep_mode):
            raise ValueError("merged adapter serving reloads the weights in one process, outside sleep mode's "
                             "offload: it needs tensor_parallel_size=1 and enable_sleep_mode=False")
        # On CPU, seeded sampling with chunked prefill rewinds the sampler's
        # RNG offset, which torch's CPU generator does not support: schedule
        # whole prompts instead (cheap at these prompt lengths).
        cpu_scheduling = {"enable_chunked_prefill": False, "max_num_batched_tokens": max(spec.max_model_len, BATCHED_TOKENS)}
        # The engine core runs in the actor's own process: a separate engine-core process imports vLLM again
        # (~3.5x the start-up time on 2 cores) and is one more process that must not outlive a killed actor
        # (it would hold its GPU memory and fail the restarted engine's check). Tensor parallelism runs on vLLM's
        # multiprocessing executor inside the actor's bundle (its Ray executor refuses a bundle of several GPUs
        # and would place workers in other engines' bundles); its workers exit with the actor (vLLM's death
        # pipe), and the watcher kills anything left.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if spec.engine_core_process else "0"
        executor = {"distributed_executor_backend": "uni" if spec.tensor_parallel_size == 1 else "mp"}
        self._watcher = reaper.watch()
        gpu_memory = {"gpu_memory_utilization": spec.gpu_memory_utilization, "enable_sleep_mode": spec.enable_sleep_mode}
        self.on_cpu = on_cpu
        self.spec = spec
        self.llm = LLM(
            model=spec.model_path,
            dtype=spec.dtype,
            max_model_len=spec.max_model_len,
            enable_lora=not spec.merge_adapters,
            max_lora_rank=spec.max_lora_rank,
            max_loras=spec.max_loras,
            seed=spec.seed,
            enable_prefix_caching=spec.enable_prefix_caching,
            disable_log_stats=not spec.log_stats,
            tensor_parallel_size=spec.tensor_parallel_size,
            trust_remote_code=spec.trust_remote_code,
            # On CPU the model runs eagerly, as vLLM runs every CPU engine built for LoRA: compiling it took 68 s
            # of each engine start on 2 cores (this vLLM build cannot load its compile cache back, so every start
            # compiles anew) for 1.22x the decode speed, which repays only after ~48,000 generated tokens.
            enforce_eager=on_cpu,
            **executor,
            **(cpu_scheduling if on_cpu else gpu_memory),
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._loras: dict[AdapterRef, Any] = {}  # each adapter proven (``workers.training.canaries``) before first use
        self._next_lora_id = 0
        self._holds: object = None  # merged serving: the AdapterRef whose weights the engine holds (None: base)
        self._proven: set[AdapterRef] = set()  # merged serving: adapters whose canaries passed on this engine
        self._asleep = False
        self._memory = SleepMemory(spec.tensor_parallel_size, None if on_cpu else nvml_probe())

    def ready(self) -> EngineInfo:
        """Where the engine runs and its threads, once it is loaded (the pool waits on this)."""
        import torch

        return dataclasses.replace(EngineInfo.here(), threads=torch.get_num_threads())

    def sleep(self) -> None:
        """Release accelerator memory (weights offloaded, KV cache dropped) while a colocated trainer runs; the
        memory released on each GPU is measured, for ``wake`` to wait for.

        Raises RuntimeError on CPU, where there is nothing to release: the
        pool shuts CPU engines down instead.
        """
        if self.on_cpu or not self.spec.enable_sleep_mode:
            raise RuntimeError("engine sleep needs a GPU engine built with enable_sleep_mode")
        self._memory.sleep(lambda: self.llm.sleep(level=1))
        self._asleep = True

    def wake(self, timeout_s: float = 300.0) -> float:
        """After ``sleep``: wait until the GPUs have free what the engine released (``workers.handover``: the
        trainer's processes may still be exiting), reload the weights, then prove every adapter it still holds again
        (a wake-up that lost LoRA weights fails here, ServedModelError). The seconds spent proving."""
        if self._asleep:
            self._memory.wait(timeout_s)
            self.llm.wake_up()
            self._asleep = False
        return self.reprove()

    def reprove(self) -> float:
        """Check the canaries of every adapter this engine holds again (ServedModelError when one differs); the
        seconds it took."""
        import time

        t0 = time.monotonic()
        # Only the adapters still loaded: those evicted are read from their folders again when next used.
        resident = self.llm.llm_engine.list_loras() if self._loras else set()
        for adapter, lora in self._loras.items():
            if lora.lora_int_id in resident:
                canaries.prove(adapter, local_copy(adapter.path, adapter.digest),
                               lambda requests: self._score(requests, lora))
        if isinstance(self._holds, AdapterRef):
            canaries.prove(self._holds, local_copy(self._holds.path, self._holds.digest),
                           lambda requests: self._score(requests, None))
        return time.monotonic() - t0

    def close(self) -> None:
        """Stop the engine, and its background processes where it has them (they busy-poll a core while alive)."""
        self.llm.llm_engine.engine_core.shutdown()

    def _serve(self, adapter: AdapterRef | None) -> Any:
        """Make the engine serve ``adapter`` (None = base); the LoRA request to pass with its calls (None when
        merged). Each adapter's canaries are checked on first use (ServedModelError when they differ)."""
        if not self.spec.merge_adapters:
            return self._lora(adapter)
        if adapter != self._holds:
            folder = None if adapter is None else local_copy(adapter.path, adapter.digest)
            self._holds = _PARTLY_RELOADED  # until the reload has finished: a failed one is redone on the next call
            self.llm.collective_rpc("reload_weights", kwargs={
                "weights_iterator": merged_weights(self.spec.model_path, folder), "is_checkpoint_format": True})
            # Cached KV blocks were computed by the weights just replaced.
            if not self.llm.reset_prefix_cache():
                raise RuntimeError("vLLM did not reset its prefix cache after a weight reload")
            self._holds = adapter
        if adapter is not None and adapter not in self._proven:
            folder = local_copy(adapter.path, adapter.digest)
            canaries.prove(adapter, folder, lambda requests: self._score(requests, None))
            self._proven.add(adapter)
        return None

    def _lora(self, adapter: AdapterRef | None) -> Any:
        """The LoRA request of ``adapter``, its canaries checked on first use (ServedModelError when they differ)."""
        if adapter is None:
            return None
        if adapter not in self._loras:
            from vllm.lora.request import LoRARequest

            # A new id per (name, path, digest): vLLM caches adapters by id, so a re-trained adapter is loaded anew.
            folder = local_copy(adapter.path, adapter.digest)
            self._next_lora_id += 1  # never reused, even for an adapter that failed its proof (vLLM keeps it loaded)
            lora = LoRARequest(adapter.name, self._next_lora_id, folder)
            canaries.prove(adapter, folder, lambda requests: self._score(requests, lora))
            self._loras[adapter] = lora
        return self._loras[adapter]

    def complete(
        self, requests: list[CompletionRequest], sampling: SamplingSpec, adapter: AdapterRef | None
    ) -> list[Completion]:
        """Sample one completion per request (chat template applied, per-request seed)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import StructuredOutputsParams

        prompts = [TokensPrompt(prompt_token_ids=prompt_token_ids(self.tokenizer, r.user_message)) for r in requests]
        structured = StructuredOutputsParams(regex=sampling.regex) if sampling.regex else None
        params = [
            SamplingParams(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                seed=r.seed,
                structured_outputs=structured,
            )
            for r in requests
        ]
        outs = self.llm.generate(prompts, params, lora_request=self._serve(adapter), use_tqdm=False)
        return [
            Completion(text=o.outputs[0].text, num_tokens=len(o.outputs[0].token_ids), finish_reason=str(o.outputs[0].finish_reason))
            for o in outs
        ]

    def choice_distribution(self, requests: list[ChoiceRequest], adapter: AdapterRef | None) -> list[list[float]]:
        """Per request, the probabilities of its one-token options after its line (see ``ChoiceRequest``), from one
        forward pass each."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts, params, option_ids = [], [], []
        for r in requests:
            line, options = choice_token_ids(self.tokenizer, r.line, r.options)
            prefix = list(self.tokenizer(r.reply_prefix, add_special_tokens=False).input_ids) if r.reply_prefix else []
            prompts.append(TokensPrompt(prompt_token_ids=prompt_token_ids(self.tokenizer, r.user_message) + prefix + line))
            params.append(SamplingParams(max_tokens=1, temperature=0.0, logprobs=len(options), logprob_token_ids=options))
            option_ids.append(options)
        outs = self.llm.generate(prompts, params, lora_request=self._serve(adapter), use_tqdm=False)
        return [renormalise([o.outputs[0].logprobs[0][t].logprob for t in ids]) for o, ids in zip(outs, option_ids)]

    def score(self, requests: list[ScoreRequest], adapter: AdapterRef | None) -> list[ScoreResult]:
        """Summed log-prob of each response given its prompt, under ``adapter`` (None = base)."""
        return self._score(requests, self._serve(adapter))

    def _score(self, requests: list[ScoreRequest], lora: Any) -> list[ScoreResult]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        encoded = [
            (prompt_token_ids(self.tokenizer, r.user_message), response_token_ids(self.tokenizer, r.response, r.finish_reason))
            for r in requests
        ]
        prompts = [TokensPrompt(prompt_token_ids=p + y) for p, y in encoded]
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        # vLLM's CPU LoRA kernels mis-shape the LoRA logits step of prompt_logprobs when several requests share a
        # scheduler step (einsum over request count vs prompt tokens), with or without an adapter in the call: on a
        # CPU engine built for LoRA each request runs alone.
        step = 1 if self.on_cpu and not self.spec.merge_adapters else max(1, len(prompts))
        outs = [
            o
            for i in range(0, len(prompts), step)
            for o in self.llm.generate(prompts[i : i + step], params, lora_request=lora, use_tqdm=False)
        ]
        results = []
        for (p, y), o in zip(encoded, outs):
            plp = o.prompt_logprobs
            total = sum(plp[len(p) + i][tok].logprob for i, tok in enumerate(y))
            results.append(ScoreResult(logp=float(total), num_tokens=len(y)))
        return results
