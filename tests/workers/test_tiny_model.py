"""Integration on the real tiny model: vLLM engine and DPO trainer, no mocks."""

import json
import math
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from orchestrator.rewards.judge import pairwise_message, score_choice, winner_choice
from tests import ROOT, specs
from tests.workers.pairs_table import pairs_table, trained_adapter
from tests.workers.training.test_batch_invariance import alone, approx
from workers.engines.choices import choice_token_ids
from workers.engines.vllm import VLLMEngine
from workers.tokens import prompt_token_ids, response_token_ids
from workers.training import canaries
from workers.training.losses import CDPO, CREAM, DPO, IPO, RDPO, SoftPreference
from workers.training.mc_dropout import decoder_layers, mc_dropout_logprobs
from workers.training.trainer import DPOTrainerCore
from workers.types import AdapterRef, CompletionRequest, SamplingSpec, ScoreRequest, ServedModelError

pytestmark = pytest.mark.integration


# Summed log-probs over ~10-30 tokens, vLLM vs PyTorch, both float32: they
# agree to ~1e-4 in practice; the stated tolerance leaves room for kernel
# differences (vLLM's CPU attention vs SDPA).
LOGP_ATOL = 5e-3
ENGINE = ("model.max_model_len=1024", "resources.kv_cache_gib=1")

PAIRS = [
    ("What is 17 * 23? Answer with a number.", "17 * 23 = 391.", "17 * 23 = 315."),
    ("Name the capital of France.", "The capital of France is Paris.", "France is a country in Europe with many cities."),
]


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    eng = VLLMEngine(specs.engine(tiny_model_path, *ENGINE, "resources.adapter_serving=merged"))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def trained(tiny_model_path, tmp_path_factory):
    """A trainer after one DPO step on PAIRS, its loss before/after, and the LoRA weights before."""
    out = tmp_path_factory.mktemp("adapter")
    table = pairs_table(PAIRS)
    spec = specs.training(tiny_model_path, "dpo.learning_rate=5e-3", f"dpo.micro_batch_pairs={len(PAIRS)}", out=out)
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


def test_the_adapter_is_written_byte_for_byte_the_same_in_any_process(trained):
    """PEFT holds the target modules as a set, whose order changes with each process's string-hash seed: the
    adapter's config is written sorted, so the same training gives the same bytes (a run's artifacts are compared
    by their sha256)."""
    config = json.loads((trained[-1] / "adapter_config.json").read_text())
    assert len(config["target_modules"]) == 7 and config["target_modules"] == sorted(config["target_modules"])
    assert list(config) == sorted(config)


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


@pytest.fixture(scope="module")
def exported(trained, tiny_model_path, tmp_path_factory):
    """``selfreward export`` of the one-step adapter, from a run dir that records it as M1: (merged, adapter-only)."""
    from orchestrator.cli import main
    from orchestrator.config import load_config
    from orchestrator.models import model_fingerprint
    from orchestrator.run.rundir import RunDir

    *_, adapter_dir = trained
    root = tmp_path_factory.mktemp("export")
    rd = RunDir(root / "run")
    rd.open(load_config(None, [f"model.path={tiny_model_path}"]), {"x": "1"}, model_fingerprint(tiny_model_path))
    shutil.copytree(adapter_dir, root / "run" / "iter_001" / "adapter")
    rd.commit("iter_001/train", "iter_001/adapter", None, 1.0, {})
    rd.close()
    assert main(["export", str(root / "run"), "--out", str(root / "merged")]) == 0
    assert main(["export", str(root / "run"), "--out", str(root / "adapter"), "--adapter-only", "--iteration", "1"]) == 0
    return root / "merged", root / "adapter"


@pytest.fixture(scope="module")
def other_engines(trained, tiny_model_path, exported):
    """Summed log-probs of PAIRS_REQUESTS from the engines the module's merged engine is compared with, one after the
    other in a process of their own (vLLM's in-process engines share global state: closing one tears down
    another's): vLLM's per-request LoRA serving (with the adapter, and the base), and the exported merged folder."""
    *_, adapter_dir = trained
    code = ("import json, sys; from workers.engines.vllm import VLLMEngine; "
            "from workers.types import AdapterRef, ScoreRequest; from tests.specs import engine; "
            "base, folder, exported, requests = json.loads(sys.stdin.read()); "
            "requests = [ScoreRequest(*r) for r in requests]; out = {}; "
            "e = VLLMEngine(engine(base, 'model.max_model_len=1024', 'resources.kv_cache_gib=1', "
            "'resources.adapter_serving=lora')); "
            "out['lora'], out['lora_base'] = [[s.logp for s in e.score(requests, a)] "
            "for a in (AdapterRef('one-step', folder), None)]; out['reprove_s'] = e.wake(); e.close(); "
            "e = VLLMEngine(engine(exported, 'model.max_model_len=1024', 'resources.kv_cache_gib=1')); "
            "out['exported'] = [s.logp for s in e.score(requests, None)]; e.close(); "
            "print('LOGPS', json.dumps(out))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=900, input=json.dumps(
        [str(tiny_model_path), str(adapter_dir), str(exported[0]),
         [[r.user_message, r.response, r.finish_reason] for r in PAIRS_REQUESTS]]))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("LOGPS "))[6:])


def test_merged_and_lora_serving_agree(engine, trained, other_engines):
    """An adapter served merged (the engine's weights reloaded with its update added) scores as vLLM's per-request
    LoRA serves it, and a merged engine that switches back serves the base model exactly as before."""
    *_, adapter_dir = trained
    adapter = AdapterRef("one-step", str(adapter_dir))
    assert engine.spec.merge_adapters
    base_before = [s.logp for s in engine.score(PAIRS_REQUESTS, None)]
    merged = [s.logp for s in engine.score(PAIRS_REQUESTS, adapter)]
    # After a wake-up every adapter an engine serves is proven again (here none slept: the proof alone, timed).
    assert engine.wake() > 0 and other_engines["reprove_s"] > 0
    print(f"canaries proven again after a wake-up in {engine.wake():.2f}s (merged), {other_engines['reprove_s']:.2f}s (LoRA)")
    base_after = [s.logp for s in engine.score(PAIRS_REQUESTS, None)]
    assert merged == pytest.approx(other_engines["lora"], abs=1e-3)
    assert base_after == base_before and base_before == pytest.approx(other_engines["lora_base"], abs=1e-3)
    assert max(abs(a - b) for a, b in zip(merged, base_before)) > 20 * LOGP_ATOL


def test_an_exported_model_scores_as_its_adapter_served_on_the_base(engine, trained, exported, other_engines):
    """``selfreward export``: the merged folder loads in vLLM and in transformers and scores as the base model with
    the adapter does (vLLM within 1e-3, transformers within LOGP_ATOL of the trainer); ``--adapter-only`` loads onto
    the base PEFT finds recorded in it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    core, *_, adapter_dir = trained
    merged, adapter = exported
    assert {"config.json", "tokenizer.json", "chat_template.jinja", "generation_config.json",
            "selfreward-export.json"} <= {p.name for p in merged.iterdir()}
    seqs = [(prompt_token_ids(core.tokenizer, q.user_message), response_token_ids(core.tokenizer, q.response, "stop"))
            for q in PAIRS_REQUESTS]
    core.model.eval()
    with torch.no_grad():
        with_adapter = core.sequence_logprobs(core.model, seqs).tolist()
        merged_hf = core.sequence_logprobs(AutoModelForCausalLM.from_pretrained(merged, trust_remote_code=False).eval(), seqs)
        recorded = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(recorded, trust_remote_code=False),
                                     adapter).eval()
        adapter_hf = core.sequence_logprobs(peft, seqs)
    assert merged_hf.tolist() == pytest.approx(with_adapter, abs=LOGP_ATOL)
    assert adapter_hf.tolist() == pytest.approx(with_adapter, abs=LOGP_ATOL)
    served = [s.logp for s in engine.score(PAIRS_REQUESTS, AdapterRef("one-step", str(adapter_dir)))]
    assert other_engines["exported"] == pytest.approx(served, abs=1e-3)


def test_an_engine_proves_the_adapter_it_serves(engine, trained, tiny_model_path, tmp_path):
    """The canaries the trainer recorded pass on the adapter itself, and stop an engine serving another adapter
    (or a stale one) under the requested name, naming engine, adapter and the difference."""
    *_, adapter_dir = trained
    recorded, tolerance = canaries.load(adapter_dir)
    assert tolerance == canaries.TOLERANCE["float32"] and canaries.distinguishable(recorded, tolerance)
    engine.score([ScoreRequest("Hi?", "Hello.", "stop")], AdapterRef("proven", str(adapter_dir), "d1"))  # passes
    # Another adapter's weights under this adapter's name and canaries.
    impostor = tmp_path / "impostor"
    trained_adapter(tiny_model_path, impostor, 2e-2)
    shutil.copy(adapter_dir / canaries.CANARIES_FILE, impostor / canaries.CANARIES_FILE)
    with pytest.raises(ServedModelError, match=r"engine \S+:\d+ does not serve adapter proven \(.*impostor\).*nats/token"):
        engine.score([ScoreRequest("Hi?", "Hello.", "stop")], AdapterRef("proven", str(impostor), "d2"))
    # An adapter trained again under the same name and path (after --redo): a new digest, so the engine loads the
    # new weights, proves them, and scores with them, not with the cached first ones.
    again = tmp_path / "again"
    shutil.copytree(adapter_dir, again)
    first = engine.score(PAIRS_REQUESTS, AdapterRef("again", str(again), "v1"))
    shutil.rmtree(again)
    core = trained_adapter(tiny_model_path, again, 2e-2)
    second = engine.score(PAIRS_REQUESTS, AdapterRef("again", str(again), "v2"))
    seqs = [(prompt_token_ids(core.tokenizer, q.user_message), response_token_ids(core.tokenizer, q.response, "stop"))
            for q in PAIRS_REQUESTS]
    core.model.eval()
    with torch.no_grad():
        want = core.sequence_logprobs(core.model, seqs).tolist()
    assert [s.logp for s in second] == pytest.approx(want, abs=LOGP_ATOL)
    assert max(abs(a.logp - b.logp) for a, b in zip(first, second)) > 20 * LOGP_ATOL


PAIRS_REQUESTS = [ScoreRequest(p, y, "stop") for p, c, r in PAIRS for y in (c, r)]


def test_reference_previous_is_the_adapter_training_starts_from(tiny_model_path, trained):
    *_, adapter_dir = trained
    common = (f"dpo.micro_batch_pairs={len(PAIRS)}", "dpo.learning_rate=1e-3")
    prev = DPOTrainerCore(specs.training(tiny_model_path, *common, "scoring.reference=previous", "dpo.loss=rdpo",
                                   "dpo.epsilon=0.2", "iterations=2", init_adapter=adapter_dir))
    examples = prev.encode(pairs_table(PAIRS))
    # Reference = M(t-1) itself: every implicit margin starts at 0, so the first
    # step's loss is l(0) for any loss of the family: rDPO gives log 2 too.
    assert prev.fit(examples).steps[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    base = DPOTrainerCore(specs.training(tiny_model_path, *common, init_adapter=adapter_dir))
    # Against the base model, M(1) already prefers the chosen responses it was trained on.
    first = base.fit(base.encode(pairs_table(PAIRS))).steps[0]
    assert first["loss"] < 0.6931 - 1e-3 and first["reward_accuracy"] == 1.0


def test_choice_distribution_reads_the_judges_next_token_probabilities(engine, trained):
    """The engine's one-pass option distribution equals the trainer-side model's next-token softmax over the
    options: the digits of a score line, and A / B of a pairwise verdict."""
    core, *_ = trained
    requests = [score_choice("Rate this.", "Clear and correct.\nScore: 4"), score_choice("Rate that.", "Off topic"),
                winner_choice(pairwise_message("Q?", "one", "two"))]
    probs = engine.choice_distribution(requests, None)
    for r, got in zip(requests, probs):
        line, options = choice_token_ids(core.tokenizer, r.line, r.options)
        ids = prompt_token_ids(core.tokenizer, r.user_message) + list(
            core.tokenizer(r.reply_prefix, add_special_tokens=False).input_ids) + line
        with torch.no_grad(), core.model.disable_adapter():
            core.model.eval()
            logits = core.model(input_ids=torch.tensor([ids])).logits[0, -1]
        expected = torch.softmax(logits[options].double(), dim=0).tolist()
        assert len(got) == len(r.options) and sum(got) == pytest.approx(1.0) and got == pytest.approx(expected, abs=2e-3)


@pytest.fixture(scope="module")
def random_adapter(tiny_random_model_path, tmp_path_factory):
    """An adapter trained on PAIRS on the tiny random model (the MC-dropout mechanics need no real weights)."""
    out = tmp_path_factory.mktemp("random-adapter")
    trained_adapter(tiny_random_model_path, out, 2e-2)
    return out


def test_mc_dropout_passes_are_stochastic_and_seeded(tiny_random_model_path, random_adapter):
    """T dropout passes of the policy, and the reference scored by the same code without dropout."""
    adapter_dir = random_adapter
    spec = specs.training(tiny_random_model_path, seed=3, init_adapter=adapter_dir)
    reqs = [ScoreRequest(p, c, "stop") for p, c, _ in PAIRS]
    a, ref = mc_dropout_logprobs(spec, reqs, passes=3, p=0.1)
    assert (a, ref) == mc_dropout_logprobs(spec, reqs, passes=3, p=0.1)  # same seed, same passes
    assert all(len(row) == 3 and len(set(row)) == 3 for row in a)  # each pass drops different units
    nearly_off, ref_again = mc_dropout_logprobs(spec, reqs, passes=2, p=1e-9)
    core = DPOTrainerCore(spec)
    core.model.eval()
    seqs = [(prompt_token_ids(core.tokenizer, r.user_message), response_token_ids(core.tokenizer, r.response, "stop")) for r in reqs]
    with torch.no_grad():
        policy = core.sequence_logprobs(core.model, seqs).tolist()
        with core.model.disable_adapter():
            base = core.sequence_logprobs(core.model, seqs).tolist()
    assert [row[0] for row in nearly_off] == pytest.approx(policy, abs=1e-4)
    # Dropout acts on every decoder layer's output, found under the LoRA wrapper.
    assert len(decoder_layers(core.model)) == core.model.config.num_hidden_layers >= 2
    # The reference (here the base model) by the same code: equal to the base model's own log-probs, and not the
    # trained policy's.
    assert ref == ref_again == pytest.approx(base, abs=1e-4) and ref != pytest.approx(policy, abs=1e-3)
    # A reference adapter is loaded beside the policy: with the policy's own adapter it equals the policy.
    _, same = mc_dropout_logprobs(spec, reqs, passes=1, p=0.1, reference=AdapterRef("reference", str(adapter_dir)))
    assert same == pytest.approx(policy, abs=1e-4)


@pytest.mark.parametrize("loss, at_zero", [
    (DPO(0.1), math.log(2)), (CDPO(0.1, 0.2), math.log(2)), (RDPO(0.1, 0.2), math.log(2)),
    (IPO(0.1), (1 / (2 * 0.1)) ** 2), (SoftPreference(0.1), math.log(2)), (CREAM(0.1), math.log(2)),
], ids=lambda x: type(x).__name__ if not isinstance(x, float) else "")
def test_every_loss_of_the_family_trains_the_tiny_model(tiny_random_model_path, loss, at_zero):
    """One short training per loss: the first step starts at the loss's value at margin 0 (a fresh adapter is the
    reference), every step is finite, and the first update moves the policy toward the chosen responses."""
    spec = replace(specs.training(tiny_random_model_path, "dpo.learning_rate=5e-3", f"dpo.micro_batch_pairs={len(PAIRS)}",
                            "dpo.epochs=2"), loss=loss)  # the loss object itself is under test
    core = DPOTrainerCore(spec)
    before = {n: p.detach().clone() for n, p in core.model.named_parameters() if "lora_" in n}
    result = core.fit(core.encode(pairs_table(PAIRS)))
    assert [s["step"] for s in result.steps] == [1, 2] and all(math.isfinite(s["loss"]) for s in result.steps)
    first, second = result.steps
    assert first["loss"] == pytest.approx(at_zero, abs=1e-4) and first["reward_margin"] == pytest.approx(0, abs=1e-6)
    assert second["reward_margin"] > 0 and second["reward_accuracy"] == 1.0
    assert any(not torch.equal(p, before[n]) for n, p in core.model.named_parameters() if "lora_" in n)


def test_down_weighting_is_absolute(tiny_random_model_path, monkeypatch):
    """A step's loss is normalised by its pair count, not by its own weight sum or the stage's mean weight: a
    batch of only down-weighted pairs trains at reduced strength, whatever the other pairs' weights."""
    spec = specs.training(tiny_random_model_path, "dpo.micro_batch_pairs=2")
    core = DPOTrainerCore(spec)
    triples = PAIRS + [(p + " Please.", c, r) for p, c, r in PAIRS]
    examples = core.encode(pairs_table(triples, weights=[1.0, 1.0, 0.25, 0.25]))
    normalisers = []
    step = core._step
    monkeypatch.setattr(core, "_step", lambda *a: normalisers.append(a[4]) or step(*a))
    core.fit(examples)
    assert normalisers == [2, 2]  # the same for the full and the down-weighted batch

    def grad_norm(weights):
        core.model.zero_grad(set_to_none=True)
        batch = core.encode(pairs_table(PAIRS, weights=weights))
        core.accumulate(core.model, batch, core.reference_logprobs(batch), [0, 1], scale=1 / 2)
        return torch.sqrt(sum((p.grad ** 2).sum() for p in core.model.parameters() if p.grad is not None)).item()

    assert grad_norm([0.25, 0.25]) == pytest.approx(0.25 * grad_norm([1.0, 1.0]), rel=1e-4)


def test_gradient_checkpointing_changes_memory_not_the_math(tiny_random_model_path):
    """The same two DPO steps with activations recomputed give the same losses and the same adapter."""
    def run(checkpointing):
        spec = specs.training(tiny_random_model_path, "dpo.learning_rate=5e-3", "dpo.micro_batch_pairs=1", "lora.dropout=0.1",
                        f"resources.gradient_checkpointing={str(checkpointing).lower()}", seed=3)
        core = DPOTrainerCore(spec)
        result = core.fit(core.encode(pairs_table(PAIRS)))
        return core, [s["loss"] for s in result.steps]

    plain, plain_losses = run(False)
    recomputed, losses = run(True)
    assert recomputed.model.get_base_model().is_gradient_checkpointing
    assert not plain.model.get_base_model().is_gradient_checkpointing
    assert len(losses) == 2 and losses == pytest.approx(plain_losses, abs=1e-6)
    weights = {n: p for n, p in plain.model.named_parameters() if p.requires_grad}
    for n, p in recomputed.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, weights[n], atol=1e-6, rtol=0)


def test_the_trainer_fetches_the_adapter_it_continues_from_by_its_digest(trained, tiny_model_path, monkeypatch):
    """A remote adapter trained again under the same URI (after --redo) is downloaded anew, never the cached one."""
    import workers.training.trainer as trainer_module

    out = trained[5]
    seen, real = [], trainer_module.local_copy
    monkeypatch.setattr(trainer_module, "local_copy", lambda loc, digest="": seen.append((str(loc), digest)) or real(loc, digest))
    DPOTrainerCore(specs.training(tiny_model_path, init_adapter=out, digest="sha-of-the-committed-train-stage"))
    assert seen == [(str(out), "sha-of-the-committed-train-stage")]


# A long response and short ones: packed rows are as wide as the longest sequence, so the short ones share rows.
LONG = "Paris is the capital of France. It lies on the Seine, and its museums draw visitors from everywhere. " * 4
MIXED = [ScoreRequest(p, y, "stop") for p, c, r in PAIRS for y in (c, r, "Yes.", LONG)] + list(canaries.FIXED)


def test_mc_dropout_at_p_zero_equals_a_plain_forward_of_each_sequence_alone(tiny_random_model_path, random_adapter):
    """With nothing dropped, the MC-dropout pass and its reference are each sequence's own plain forward."""
    spec = specs.training(tiny_random_model_path, "dpo.micro_batch_pairs=4", seed=3, init_adapter=random_adapter)
    by_pass, ref = mc_dropout_logprobs(spec, MIXED, passes=1, p=0.0)
    core = DPOTrainerCore(spec)
    core.model.eval()
    seqs = [(prompt_token_ids(core.tokenizer, r.user_message), response_token_ids(core.tokenizer, r.response, r.finish_reason))
            for r in MIXED]
    with torch.no_grad():
        policy = [alone(core.model, p, y) for p, y in seqs]
        with core.model.disable_adapter():
            base = [alone(core.model, p, y) for p, y in seqs]
    assert [row[0] for row in by_pass] == approx(policy)
    assert ref == approx(base)


def test_the_trainers_canaries_are_each_canary_scored_alone(trained):
    """The canary log-probs an adapter is published with, as the Ray Train loop picks them (two kept pairs' chosen and
    rejected, then the fixed text): all in one packed pass, where the short ones share rows as wide as the long
    ones, yet each equals its own plain forward. (A run once stopped at iteration 2 because they did not.)"""
    core = trained[0]
    requests = canaries.pick(pairs_table([(p, LONG, r) for p, _, r in PAIRS]).to_pylist())
    assert len(requests) == 5
    with_adapter, base, _ = core.canary_logprobs(requests)
    seqs = [(prompt_token_ids(core.tokenizer, r.user_message), response_token_ids(core.tokenizer, r.response, r.finish_reason))
            for r in requests]
    core.model.eval()
    with torch.no_grad():
        assert with_adapter == approx([alone(core.model, p, y) for p, y in seqs])
        with core.model.disable_adapter():
            assert base == approx([alone(core.model, p, y) for p, y in seqs])


def test_vllm_scores_a_request_the_same_alone_and_in_a_batch(engine, trained):
    adapter = AdapterRef("one-step", str(trained[-1]))
    for a in (None, adapter):
        batch = [s.logp for s in engine.score(MIXED, a)]
        single = [engine.score([r], a)[0].logp for r in MIXED]
        assert batch == pytest.approx(single, abs=1e-3)
