"""Every config field as Markdown, from the config's own declarations (``orchestrator.config``).

``selfreward config --docs`` prints it; docs/CONFIG.md is this text (``make docs`` writes it, and a test fails when
the file is stale). With it, how this project's names map to TRL's ``DPOConfig``, PEFT's ``LoraConfig`` and vLLM's
``SamplingParams``, for readers who know those.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import BaseModel

from orchestrator.config import RunConfig

HEADER = """# Config reference

Generated from `orchestrator/config.py` by `selfreward config --docs` (`make docs`); do not edit by hand.
A YAML file sets some fields, dotted overrides on the command line (`dpo.beta=0.05`) set more, and
`selfreward config CONFIG [overrides]` prints the resolved config. Fields marked *resume-safe* may change when a
run is resumed; any other change is refused on resume and, for the stages a branch shares, on `--from`
(`orchestrator/run/branch.py`).
"""

# (this project's field, the peer's name, how they relate), spelled as TRL's DPOConfig, PEFT's LoraConfig and vLLM's
# SamplingParams spell them.
PEERS: tuple[tuple[str, str, str], ...] = (
    ("dpo.loss: dpo", "TRL `loss_type: sigmoid`", "the same loss"),
    ("dpo.loss: cdpo", "TRL `loss_type: sigmoid` + `label_smoothing`", "`dpo.epsilon` is `label_smoothing`"),
    ("dpo.loss: rdpo", "TRL `loss_type: robust` + `label_smoothing`", "`dpo.epsilon` is `label_smoothing`"),
    ("dpo.loss: ipo", "TRL `loss_type: ipo`", "per-token log-probs, as TRL computes IPO"),
    ("dpo.loss: ipo_sum", "(none)", "IPO on summed log-probs, as in the IPO paper"),
    ("dpo.loss: soft / cream", "(none)", "a per-pair soft label (`label_p`)"),
    ("dpo.beta", "TRL `beta`", ""),
    ("dpo.learning_rate, dpo.weight_decay", "TRL `learning_rate`, `weight_decay`", "AdamW in both"),
    ("dpo.epochs", "TRL `num_train_epochs`", "per iteration here"),
    ("dpo.micro_batch_pairs", "TRL `per_device_train_batch_size`", "pairs per forward/backward on one worker"),
    ("dpo.grad_accum_steps", "TRL `gradient_accumulation_steps`", ""),
    ("dpo.max_grad_norm", "TRL `max_grad_norm`", ""),
    ("dpo.lr_schedule, dpo.warmup_steps", "TRL `lr_scheduler_type`, `warmup_steps`", "per training stage"),
    ("scoring.reference: previous", "TRL `ref_model` = the previous iterate", "base: the reference stays M0"),
    ("resources.train_workers", "the number of processes (`accelerate launch`)", "DDP or FSDP (`resources.train_strategy`)"),
    ("model.max_model_len", "TRL `max_length`", "prompt + response tokens"),
    ("lora.rank, lora.alpha, lora.dropout, lora.target_modules", "PEFT `r`, `lora_alpha`, `lora_dropout`, "
     "`target_modules`", ""),
    ("generation.samples_per_prompt", "vLLM `n`", "sampled as separate seeded requests"),
    ("generation.temperature, top_p, max_tokens", "vLLM `temperature`, `top_p`, `max_tokens`", "the judge's likewise"),
)


def type_name(annotation: Any) -> str:
    """A field's type as a reader writes it: "one of a, b", "int", "str or null", "list of str"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin in (tuple, list):
        return f"list of {type_name(args[0])}"
    return getattr(annotation, "__name__", str(annotation))


def _rows(model: type[BaseModel], prefix: str) -> list[tuple[str, list[tuple[str, str, str, str]]]]:
    """(section, [(field, type, default, description)]) of ``model``, nested sections after their parent's fields."""
    here, nested = [], []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            nested += _rows(ann, f"{prefix}{name}.")
            continue
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        text = (f.description or "") + (" *resume-safe*" if extra.get("safe") else "")
        default = json.dumps(list(f.default) if isinstance(f.default, tuple) else f.default)
        here.append((f"`{prefix}{name}`", type_name(ann), f"`{default}`", text.replace("|", "\\|")))
    return [(prefix.rstrip(".") or "top level", here)] * bool(here) + nested


def config_docs() -> str:
    """docs/CONFIG.md: every field with its type, default and description, then the names of the peers."""
    out = [HEADER]
    for section, rows in _rows(RunConfig, ""):
        out += [f"## {section}\n", "| field | type | default | description |", "|---|---|---|---|"]
        out += [f"| {' | '.join(r)} |" for r in rows]
        out.append("")
    out += ["## The same settings in TRL, PEFT and vLLM\n", "| here | there | note |", "|---|---|---|"]
    out += [f"| `{a}` | {b} | {c} |" for a, b, c in PEERS]
    return "\n".join(out) + "\n"
