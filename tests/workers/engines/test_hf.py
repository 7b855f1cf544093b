"""The transformers fallback engine and the packed log-prob pass, on a tiny random model, against plain transformers."""

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.rewards.judge import pairwise_message, score_choice, winner_choice
from tests import specs
from tests.workers.training.test_batch_invariance import alone, approx
from workers.engines.choices import choice_token_ids
from workers.engines.hf import HFEngine
from workers.tokens import prompt_token_ids, response_token_ids
from workers.training.logprobs import pack_rows, sequence_logprobs
from workers.types import AdapterRef, CompletionRequest, SamplingSpec, ScoreRequest

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
def engine(tiny_random_model_path):
    eng = HFEngine(specs.engine(tiny_random_model_path, "model.max_model_len=1024", "resources.kv_cache_gib=1"), batch_size=4)
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
    single = engine.complete([CompletionRequest(PROMPTS[2], 7)], sampling, None)[0]
    batch = engine.complete([CompletionRequest(PROMPTS[0], 1), CompletionRequest(PROMPTS[2], 7),
                             CompletionRequest(PROMPTS[2], 8), CompletionRequest(PROMPTS[1], 2)], sampling, None)
    assert batch[1] == single and single.num_tokens > 0
    assert batch[2].text != single.text
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
        want_base = [alone(peft_model, p, y) for p, y in seqs]
    want_lora = [alone(peft_model, p, y) for p, y in seqs]
    assert [s.logp for s in base] == pytest.approx(want_base, abs=1e-3)
    assert [s.logp for s in lora] == pytest.approx(want_lora, abs=1e-3)
    assert max(abs(a.logp - b.logp) for a, b in zip(lora, base)) > 0.1  # the adapter is really applied
    assert [s.logp for s in engine.score(reqs, None)] == pytest.approx(want_base, abs=1e-3)  # and switched off again


@pytest.mark.integration
def test_packed_logprobs_carry_gradients(engine):
    """(That they equal one-at-a-time scoring is a property in test_batch_invariance.py.)"""
    seqs = [(prompt_token_ids(engine.tokenizer, p), list(range(100, 100 + k))) for p in PROMPTS for k in (1, 7, 30)]
    w = engine.model.get_input_embeddings().weight
    w.requires_grad_(True)
    try:
        sequence_logprobs(engine.model, seqs[:2], engine.device).sum().backward()
        assert w.grad is not None and float(w.grad.abs().sum()) > 0
    finally:
        w.requires_grad_(False)
        w.grad = None


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


WORDS = ["owl", "Paris", "391", "the", "night", "because", "Answer:", "7", "river", "quickly", "\n", "?"]
TEXTS = st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(" ".join)
REQUESTS = st.lists(st.tuples(TEXTS, TEXTS), min_size=2, max_size=6)


@pytest.mark.integration
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=REQUESTS, which=st.integers(0, 5))
def test_scores_and_choices_do_not_depend_on_the_rest_of_the_batch(engine, adapter, requests, which):
    """A request's log-prob (base and adapter) and its judge-option distribution, alone and among others of other
    lengths (packed rows for scoring, left padding for the next-token read)."""
    ref, _ = adapter
    which %= len(requests)
    scores = [ScoreRequest(p, y, "stop") for p, y in requests]
    choices = [score_choice(p, y) for p, y in requests]
    for a in (None, ref):
        batch = [s.logp for s in engine.score(scores, a)]
        single = engine.score([scores[which]], a)[0].logp
        assert [batch[which]] == approx([single])
    batch_c = engine.choice_distribution(choices, None)[which]
    assert batch_c == pytest.approx(engine.choice_distribution([choices[which]], None)[0], abs=1e-4)


@pytest.mark.integration
def test_greedy_generation_does_not_depend_on_the_rest_of_the_batch(engine):
    """Left padding by other prompts' lengths leaves a greedy answer unchanged."""
    sampling = SamplingSpec(temperature=0.0, top_p=1.0, max_tokens=24)
    prompts = PROMPTS + ["Hi.", "List three prime numbers greater than ten, separated by commas, and nothing else."]
    batch = engine.complete([CompletionRequest(p, 0) for p in prompts], sampling, None)
    for p, c in zip(prompts, batch):
        assert engine.complete([CompletionRequest(p, 0)], sampling, None)[0] == c



def test_waking_proves_every_served_adapter_again_and_fails_on_lost_lora_weights(tiny_random_model_path, tmp_path):
    """An engine proves its adapters' canaries after every wake-up (workers.handover): a vLLM issue lost LoRA weights
    silently after waking. On the CPU an engine is not put to sleep; ``wake`` after none proves them all the same."""
    from tests.workers.pairs_table import PAIRS, trained_adapter
    from workers.types import ServedModelError

    eng = HFEngine(specs.engine(tiny_random_model_path, "model.max_model_len=1024", "resources.kv_cache_gib=1"), batch_size=4)
    trained_adapter(tiny_random_model_path, tmp_path / "a", 2e-2)
    ref = AdapterRef("iter_001", str(tmp_path / "a"))
    eng.score([ScoreRequest(p, c, "stop") for p, c, _ in PAIRS[:2]], ref)  # proven on first use
    assert eng.wake(timeout_s=1) >= 0.0  # proven again: nothing lost
    with torch.no_grad():  # the failure, by a stand-in: the served adapter's B matrices lost (zero: the base model)
        for name, p in eng.peft.named_parameters():
            if "lora_B" in name:
                p.zero_()
    with pytest.raises(ServedModelError, match=r"does not serve adapter iter_001 .* as trained"):
        eng.wake(timeout_s=1)
    eng.close()
