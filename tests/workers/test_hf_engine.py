"""The transformers fallback engine and the packed log-prob pass, on the real tiny model, against plain transformers."""

import random

import pytest
import torch

from workers.hf_engine import HFEngine
from workers.judge import choice_token_ids, pairwise_message, score_choice, winner_choice
from workers.logprobs import pack_rows, pair_logprobs, sequence_logprobs
from workers.tokens import prompt_token_ids, response_token_ids
from workers.types import AdapterRef, CompletionRequest, EngineSpec, SamplingSpec, ScoreRequest

PROMPTS = ["What is 17 * 23? Answer with a number.", "Name the capital of France.",
           "Write two sentences about why owls hunt at night, and say which owl is the largest."]


def test_pack_rows_places_every_sequence_once_within_the_width():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 50) for _ in range(rng.randint(1, 30))]
        width = max(lengths) + rng.randint(0, 20)
        rows = pack_rows(lengths, width)
        assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in r) <= width for r in rows)
        assert len(rows) <= len(lengths)
    assert pack_rows([30, 10, 20, 25, 5], 30) == [[0], [3, 4], [2, 1]]
    with pytest.raises(ValueError, match="more than the row width"):
        pack_rows([5, 9], 8)


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    eng = HFEngine(EngineSpec(str(tiny_model_path), "float32", 1024, 8, 0, 1.0), batch_size=4)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def adapter(engine, tmp_path_factory):
    """A LoRA adapter with random (non-zero) weights: it changes every output."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(engine.spec.model_path, dtype=torch.float32, trust_remote_code=False)
    torch.manual_seed(5)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return AdapterRef("random", str(out)), model.eval()


def direct_logprob(model, p: list[int], y: list[int]) -> float:
    """The response's summed log-prob from one unpadded forward pass of this sequence alone."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p + y])).logits[0, len(p) - 1 : -1]
    return float(torch.log_softmax(logits.double(), -1).gather(-1, torch.tensor(y).unsqueeze(-1)).sum())


@pytest.mark.integration
def test_greedy_batch_equals_transformers_generate_one_by_one(engine):
    sampling = SamplingSpec(temperature=0.0, top_p=1.0, max_tokens=24)
    got = engine.complete([CompletionRequest(p, 0) for p in PROMPTS], sampling, None)
    for p, c in zip(PROMPTS, got):
        ids = torch.tensor([prompt_token_ids(engine.tokenizer, p)])
        with torch.no_grad():
            ref = engine.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24,
                                        pad_token_id=engine.pad_id)[0, ids.shape[1]:].tolist()
        assert c.text == engine.tokenizer.decode(ref, skip_special_tokens=True)
        assert c.num_tokens == len(ref) and c.finish_reason == ("stop" if ref[-1] in engine.stop_ids else "length")


@pytest.mark.integration
def test_a_requests_sample_depends_on_its_seed_not_its_batch(engine):
    sampling = SamplingSpec(temperature=1.0, top_p=0.9, max_tokens=20)
    alone = engine.complete([CompletionRequest(PROMPTS[2], 7)], sampling, None)[0]
    batch = engine.complete([CompletionRequest(PROMPTS[0], 1), CompletionRequest(PROMPTS[2], 7),
                             CompletionRequest(PROMPTS[2], 8), CompletionRequest(PROMPTS[1], 2)], sampling, None)
    assert batch[1] == alone and alone.num_tokens > 0
    assert batch[2].text != alone.text
    assert all(c.num_tokens <= 20 and c.finish_reason in ("stop", "length") for c in batch)
    with pytest.raises(ValueError, match="judge.constrained"):
        engine.complete([CompletionRequest(PROMPTS[0], 1)], SamplingSpec(1.0, 1.0, 8, regex="Score: [0-5]"), None)


@pytest.mark.integration
def test_scores_equal_one_sequence_forward_passes_base_and_adapter(engine, adapter):
    ref, peft_model = adapter
    responses = ["391.", "The capital of France is Paris, a city on the Seine.", "Owls see well in the dark."]
    reqs = [ScoreRequest(p, y, f) for p in PROMPTS for y, f in zip(responses, ("stop", "stop", "length"))]
    seqs = [(prompt_token_ids(engine.tokenizer, r.user_message),
             response_token_ids(engine.tokenizer, r.response, r.finish_reason)) for r in reqs]
    base = engine.score(reqs, None)
    lora = engine.score(reqs, ref)
    assert [s.num_tokens for s in base] == [len(y) for _, y in seqs]
    with peft_model.disable_adapter():
        want_base = [direct_logprob(peft_model, p, y) for p, y in seqs]
    want_lora = [direct_logprob(peft_model, p, y) for p, y in seqs]
    assert [s.logp for s in base] == pytest.approx(want_base, abs=1e-3)
    assert [s.logp for s in lora] == pytest.approx(want_lora, abs=1e-3)
    assert max(abs(a.logp - b.logp) for a, b in zip(lora, base)) > 0.1  # the adapter is really applied
    assert [s.logp for s in engine.score(reqs, None)] == pytest.approx(want_base, abs=1e-3)  # and switched off again


@pytest.mark.integration
def test_packed_logprobs_equal_padded_ones_and_carry_gradients(engine):
    seqs = [(prompt_token_ids(engine.tokenizer, p), list(range(100, 100 + k))) for p in PROMPTS for k in (1, 7, 30)]
    got = sequence_logprobs(engine.model, seqs, engine.device)
    assert got.tolist() == pytest.approx([direct_logprob(engine.model, p, y) for p, y in seqs], abs=1e-3)
    w = engine.model.get_input_embeddings().weight
    w.requires_grad_(True)
    try:
        sequence_logprobs(engine.model, seqs[:2], engine.device).sum().backward()
        assert w.grad is not None and float(w.grad.abs().sum()) > 0
    finally:
        w.requires_grad_(False)
        w.grad = None


@pytest.mark.integration
def test_pair_logprobs_score_each_response_as_if_it_followed_the_prompt_alone(engine):
    """The rejected tokens share the chosen response's prompt but never see the chosen tokens."""
    prompts = [prompt_token_ids(engine.tokenizer, p) for p in PROMPTS]
    pairs = [(p, list(range(200, 200 + a)), list(range(300, 300 + b))) for p in prompts for a, b in ((1, 9), (25, 2), (6, 6))]
    chosen, rejected = pair_logprobs(engine.model, pairs, engine.device, engine.pad_id)
    assert chosen.tolist() == pytest.approx([direct_logprob(engine.model, p, c) for p, c, _ in pairs], abs=1e-3)
    assert rejected.tolist() == pytest.approx([direct_logprob(engine.model, p, y) for p, _, y in pairs], abs=1e-3)


@pytest.mark.integration
def test_choice_distribution_is_the_options_softmax(engine):
    requests = [score_choice("Rate this.", "Clear and correct.\nScore: 4"),
                score_choice("Rate that, please, carefully.", "Off topic"), winner_choice(pairwise_message("Q?", "x", "y"))]
    probs = engine.choice_distribution(requests, None)
    for r, got in zip(requests, probs):
        line, options = choice_token_ids(engine.tokenizer, r.line, r.options)
        ids = prompt_token_ids(engine.tokenizer, r.user_message) + list(
            engine.tokenizer(r.reply_prefix, add_special_tokens=False).input_ids) + line
        with torch.no_grad(), engine._using(None) as base:  # an earlier test loaded an adapter into it
            logits = base(input_ids=torch.tensor([ids])).logits[0, -1]
        assert sum(got) == pytest.approx(1.0) and got == pytest.approx(torch.softmax(logits[options].double(), 0).tolist(), abs=1e-4)