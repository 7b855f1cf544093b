"""Integration on the real tiny model: vLLM engine and DPO trainer, no mocks."""

import pytest
import torch

from tests.workers.pairs_table import pairs_table
from workers.engine import VLLMEngine
from workers.tokens import prompt_token_ids, response_token_ids
from workers.trainer import DPOTrainerCore, TrainSpec
from workers.types import AdapterRef, CompletionRequest, EngineSpec, SamplingSpec, ScoreRequest

pytestmark = pytest.mark.integration

# Summed log-probs over ~10-30 tokens, vLLM vs PyTorch, both float32: they
# agree to ~1e-4 in practice; the stated tolerance leaves room for kernel
# differences (vLLM's CPU attention vs SDPA).
LOGP_ATOL = 5e-3

PAIRS = [
    ("What is 17 * 23? Answer with a number.", "17 * 23 = 391.", "17 * 23 = 315."),
    ("Name the capital of France.", "The capital of France is Paris.", "France is a country in Europe with many cities."),
]


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    eng = VLLMEngine(EngineSpec(str(tiny_model_path), "float32", 1024, 8, 0, 1.0))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def trained(tiny_model_path, tmp_path_factory):
    """A trainer after one DPO step on PAIRS, its loss before/after, and the LoRA weights before."""
    out = tmp_path_factory.mktemp("adapter")
    table = pairs_table(PAIRS)
    spec = TrainSpec(model_path=str(tiny_model_path), dtype="float32", pairs_path="", output_dir=str(out),
                     learning_rate=5e-3, micro_batch_pairs=len(PAIRS), epochs=1, beta=0.1)
    core = DPOTrainerCore(spec)
    examples = core.encode(table)
    before = {n: p.detach().clone() for n, p in core.model.named_parameters() if "lora_" in n}

    def batch_loss() -> float:
        core.model.eval()
        with torch.no_grad():
            ref = core.reference_logprobs(examples)
            pc, pr = core.pair_logprobs(core.model, examples)
            return core.loss_fn(pc, pr, ref[:, 0], ref[:, 1], torch.ones(len(examples))).loss.item()

    loss_before = batch_loss()
    result = core.fit(examples)
    loss_after = batch_loss()
    core.save(out, result)
    return core, result, before, loss_before, loss_after, out


def test_same_seed_same_text(engine):
    sampling = SamplingSpec(temperature=1.0, top_p=1.0, max_tokens=24)
    reqs = [CompletionRequest("Tell me a fact about owls.", 7), CompletionRequest("Tell me a fact about owls.", 7),
            CompletionRequest("Tell me a fact about owls.", 8)]
    a, b, c = engine.complete(reqs, sampling, None)
    again = engine.complete(reqs[:1], sampling, None)[0]
    assert a.text == b.text == again.text and a.num_tokens > 0
    assert a.text != c.text  # another seed samples another text at temperature 1
    assert a.finish_reason in ("stop", "length")


def test_one_dpo_step_changes_lora_and_lowers_loss(trained):
    core, result, before, loss_before, loss_after, _ = trained
    assert len(result.steps) == 1 and result.steps[0]["pairs"] == len(PAIRS)
    after = {n: p.detach() for n, p in core.model.named_parameters() if "lora_" in n}
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    # LoRA starts with B = 0, so the first step moves every B and no A
    # (A's gradient is proportional to B).
    assert changed == {n for n in before if "lora_B" in n} and len(changed) > 0
    # Fresh LoRA (B = 0) is the base model: the first loss is log 2 exactly.
    assert loss_before == pytest.approx(0.6931, abs=1e-3)
    assert loss_after < loss_before - 1e-3


def test_engine_logprobs_match_trainer(engine, trained):
    core, _, _, _, _, adapter_dir = trained
    adapter = AdapterRef("one-step", str(adapter_dir))
    reqs = [ScoreRequest(p, y, "stop") for p, c, r in PAIRS for y in (c, r)]
    seqs = [(prompt_token_ids(core.tokenizer, q.user_message), response_token_ids(core.tokenizer, q.response, "stop")) for q in reqs]
    core.model.eval()
    with torch.no_grad():
        hf_lora = core.sequence_logprobs(core.model, seqs).tolist()
        with core.model.disable_adapter():
            hf_base = core.sequence_logprobs(core.model, seqs).tolist()
    v_lora = [s.logp for s in engine.score(reqs, adapter)]
    v_base = [s.logp for s in engine.score(reqs, None)]
    assert [s.num_tokens for s in engine.score(reqs, None)] == [len(y) for _, y in seqs]
    assert v_base == pytest.approx(hf_base, abs=LOGP_ATOL)
    assert v_lora == pytest.approx(hf_lora, abs=LOGP_ATOL)
    assert max(abs(a - b) for a, b in zip(v_lora, v_base)) > 20 * LOGP_ATOL  # the adapter is really applied
