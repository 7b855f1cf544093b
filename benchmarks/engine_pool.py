"""Engine pool vs raw vLLM: the same model, prompts, sampling parameters and seeds, one after the other.

Raw: ``vllm.LLM.generate`` in this process, on the token ids our engines
send. Ours: the same requests through ``EnginePool.map_items`` (one engine
actor, Ray in between). Both are warmed up first; the timed part is
generation only. The outputs must be identical (seeded sampling); the ratio
of generated tokens per second, ours / raw, is the cost of the pool. Then
the pool again with its engine held to one thread (``threads=1``, what a
one-CPU Ray actor gets by default) against the node's CPUs it is given
(``resources.torch_threads: 0``): the gain of giving a CPU engine its node.

    python -m benchmarks.engine_pool [--prompts 32] [--samples 2] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

from benchmarks import table, write_result


def requests(n_prompts: int, samples: int):
    import json
    from pathlib import Path

    from workers.types import CompletionRequest

    path = Path(__file__).parents[1] / "jobs" / "data" / "instructions_train.jsonl"
    prompts = [json.loads(line)["prompt"] for line in path.read_text().splitlines()[:n_prompts]]
    return [CompletionRequest(p, seed=1000 + 10 * i + k) for i, p in enumerate(prompts) for k in range(samples)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args()

    from orchestrator.config import load_config
    from orchestrator.models import ensure_default_model
    from orchestrator.specs import engine_spec
    from workers.engines.vllm import VLLMEngine
    from workers.types import SamplingSpec

    model = str(ensure_default_model())
    spec = engine_spec(load_config(None), model)
    reqs = requests(args.prompts, args.samples)
    sampling = SamplingSpec(0.8, 0.95, args.max_tokens)
    warm = reqs[:2]

    # Raw vLLM, with the engine's own construction arguments (VLLMEngine builds exactly this LLM).
    engine = VLLMEngine(spec)
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from workers.tokens import prompt_token_ids

    prompts = [TokensPrompt(prompt_token_ids=prompt_token_ids(engine.tokenizer, r.user_message)) for r in reqs]
    params = [SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_tokens,
                             seed=r.seed) for r in reqs]
    engine.llm.generate(prompts[:2], params[:2], use_tqdm=False)
    t0 = time.monotonic()
    raw_out = engine.llm.generate(prompts, params, use_tqdm=False)
    raw_s = time.monotonic() - t0
    raw_texts = [o.outputs[0].text for o in raw_out]
    raw_tokens = sum(len(o.outputs[0].token_ids) for o in raw_out)
    engine.close()
    del engine

    import ray

    from workers.engines.pool import EnginePool, PoolResources

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)

    def pooled(engine_spec):
        pool = EnginePool(engine_spec, PoolResources(1, 1, 0))
        pool.map_items("complete", warm, len(warm), sampling, None)
        t0 = time.monotonic()
        outs = pool.map_items("complete", reqs, len(reqs), sampling, None)
        seconds = time.monotonic() - t0
        threads = pool.infos[0].threads
        pool.shutdown()
        return outs, seconds, threads

    ours, ours_s, threads = pooled(spec)
    one, one_s, _ = pooled(replace(spec, threads=1))
    ray.shutdown()
    ours_tokens, one_tokens = sum(o.num_tokens for o in ours), sum(o.num_tokens for o in one)

    raw_tps, ours_tps = raw_tokens / raw_s, ours_tokens / ours_s
    result = {
        "requests": len(reqs), "max_tokens": args.max_tokens,
        "raw_vllm": {"seconds": round(raw_s, 3), "tokens": raw_tokens, "tokens_per_s": round(raw_tps, 2)},
        "engine_pool": {"seconds": round(ours_s, 3), "tokens": ours_tokens, "tokens_per_s": round(ours_tps, 2)},
        "identical_outputs": [o.text for o in ours] == raw_texts,
        "ratio_ours_over_raw": round(ours_tps / raw_tps, 3),
        "goal": ">= 0.97",
        "engine_threads": threads,
        "engine_pool_one_thread": {"seconds": round(one_s, 3), "tokens": one_tokens,
                                   "tokens_per_s": round(one_tokens / one_s, 2)},
        "identical_outputs_one_thread": [o.text for o in one] == raw_texts,
        "ratio_node_threads_over_one_thread": round(ours_tps / (one_tokens / one_s), 3),
    }
    path = write_result("engine_pool", result)
    print(table([["", "seconds", "tokens", "tok/s"],
                 ["raw vllm.LLM.generate", f"{raw_s:.2f}", str(raw_tokens), f"{raw_tps:.1f}"],
                 [f"engine pool (Ray actor, {threads} threads)", f"{ours_s:.2f}", str(ours_tokens), f"{ours_tps:.1f}"],
                 ["engine pool (Ray actor, 1 thread)", f"{one_s:.2f}", str(one_tokens), f"{one_tokens / one_s:.1f}"]]))
    print(f"ratio ours / raw: {result['ratio_ours_over_raw']:.3f} (goal >= 0.97); identical outputs: "
          f"{result['identical_outputs']}; {threads} threads / 1: {result['ratio_node_threads_over_one_thread']:.2f}, "
          f"identical outputs: {result['identical_outputs_one_thread']}  (wrote {path})")


if __name__ == "__main__":
    main()
