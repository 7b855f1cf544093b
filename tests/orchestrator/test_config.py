import re

import pytest

from orchestrator.config import ConfigError, RunConfig, changed_fields, config_hash, load_config, safe_fields
from tests import ROOT

CONFIGS = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path):
    assert isinstance(load_config(path), RunConfig)


def test_shipped_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"tiny-cpu.yaml", "srlm.yaml", "cream.yaml", "scir.yaml", "upo.yaml", "trusted.yaml"} <= names


def test_overrides_are_typed_and_nested(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("dpo:\n  beta: 0.2\n")
    cfg = load_config(f, ["dpo.beta=0.05", "generation.samples_per_prompt=8", "lora.target_modules=[q_proj]"])
    assert cfg.dpo.beta == 0.05 and cfg.generation.samples_per_prompt == 8
    assert cfg.lora.target_modules == ("q_proj",)


@pytest.mark.parametrize(
    "override, field",
    [
        ("dpo.beta=0", "dpo.beta"),
        ("dpo.beta=-1", "dpo.beta"),
        ("generation.samples_per_prompt=1", "generation.samples_per_prompt"),
        ("judge.judge_samples=0", "judge.judge_samples"),
        ("generation.top_p=1.5", "generation.top_p"),
        ("data.prompts_per_iteration=abc", "data.prompts_per_iteration"),
        ("dpo.betta=0.1", "dpo.betta"),  # unknown key
        ("resources.engines=0", "resources.engines"),
        ("dpo.loss=kto", "dpo.loss"),
        ("dpo.epsilon=0.5", "dpo.epsilon"),
        ("selection.consistency.threshold=1.5", "selection.consistency.threshold"),
        ("selection.judge_uncertainty.p_min=-0.1", "selection.judge_uncertainty.p_min"),
        ("selection.mc_dropout.fraction=1", "selection.mc_dropout.fraction"),
        ("selection.mc_dropout.passes=1", "selection.mc_dropout"),  # one pass has no spread
        ("selection.consistency.undefined=trust", "selection.consistency.undefined"),
        ("selection.strategy=random", "selection.strategy"),
        ("scoring.reference=sft", "scoring.reference"),
        ("data.overlong=ignore", "data.overlong"),
        ("data.columns.prompt=", "data.columns.prompt"),
        ("resources.colocate_engine_gpu_fraction=1", "resources.colocate_engine_gpu_fraction"),
        ("dpo.warmup_steps=-1", "dpo.warmup_steps"),
        ("lora.rank=1024", "lora.rank"),
        ("dpo.lr_schedule=step", "dpo.lr_schedule"),
    ],
)
def test_errors_name_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert f"`{field}`" in str(e.value)


def test_cross_field_check_names_both_fields():
    with pytest.raises(ConfigError, match="generation.max_tokens.*model.max_model_len"):
        load_config(None, ["model.max_model_len=64", "generation.max_tokens=64"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["dpo.loss=cream"], "selection.consistency.mode='off' and dpo.loss='cream' conflict"),
        (["selection.consistency.mode=dyn", "judge.previous_judge=true"], "conflict"),
        (["selection.consistency.mode=filter"], "judge.previous_judge=true"),
        (["selection.consistency.mode=filter", "selection.consistency.source=implicit", "scoring.reference=previous"],
         "scoring.reference=base"),
        (["judge.score_source=expected"], "judge.expected_score=true"),
        # A consistency mode needs a previous model: never there in a 1-iteration run.
        (["iterations=1", "selection.consistency.mode=filter", "judge.previous_judge=true"],
         "selection.consistency.mode needs a previous model"),
        (["iterations=1", "selection.agreement.enabled=true"], "set iterations >= 2 (got 1)"),
        (["iterations=1", "selection.agreement.enabled=true", "selection.agreement.signal=likelihood_change"],
         "set iterations >= 2 (got 1)"),
        # The judge-sample uncertainty is estimated on verdicts the pair was not chosen on.
        (["selection.judge_uncertainty.p_min=0.7", "judge.judge_samples=1"],
         "selection.judge_uncertainty.p_min estimates P(chosen wins) on verdicts the pair was not chosen on: set "
         "judge.judge_samples >= 2 (got 1)"),
        (["resources.colocate=true", "resources.gpus_per_engine=2", "resources.gpus_per_train_worker=1"],
         "resources.gpus_per_train_worker=1 and resources.train_workers=2 (resources.engines x "
         "resources.gpus_per_engine; got 1 and 1)"),
        (["resources.colocate=true", "resources.gpus_per_engine=1", "resources.gpus_per_train_worker=2"],
         "got 2 and 1"),
        (["resources.train_strategy=fsdp"], "resources.train_workers >= 2"),
        (["resources.adapter_serving=merged", "resources.gpus_per_engine=2"],
         "resources.gpus_per_engine=2 (tensor parallel) needs adapter_serving='lora' or 'auto'"),
        (["resources.adapter_serving=merged", "resources.gpus_per_engine=1", "resources.colocate=true",
          "resources.gpus_per_train_worker=1"], "resources.colocate=true on GPUs (sleep mode's weight offload) needs"),
        (["eval.max_tokens=4096"], "eval.max_tokens (4096) must be below model.max_model_len (2048)"),
    ],
)
def test_conflicting_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dpo: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("dpo:\n  beta: high\n")
    with pytest.raises(ConfigError, match=r"wrong.yaml[\s\S]*`dpo.beta`"):
        load_config(wrong)
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(None, ["dpo.beta"])


def test_likelihood_agreement_is_defined_from_iteration_1():
    cfg = load_config(None, ["iterations=1", "selection.agreement.enabled=true", "selection.agreement.signal=likelihood"])
    assert cfg.selection.agreement.signal == "likelihood"


def test_safe_fields_do_not_change_the_hash():
    base = load_config(None)
    assert {"iterations", "resources.ray_address", "resources.shard_size"} <= safe_fields()
    assert config_hash(base) == config_hash(load_config(None, ["iterations=7"]))
    assert config_hash(base) != config_hash(load_config(None, ["dpo.beta=0.3"]))
    assert changed_fields(base, load_config(None, ["dpo.beta=0.3"])) == [("dpo.beta", 0.1, 0.3)]


def test_adapter_serving_auto_merges_on_cpu_engines_only():
    assert load_config(None).resources.merge_adapters
    assert not load_config(None, ["resources.gpus_per_engine=1"]).resources.merge_adapters
    assert load_config(None, ["resources.adapter_serving=merged", "resources.gpus_per_engine=1"]).resources.merge_adapters
    assert not load_config(None, ["resources.adapter_serving=lora"]).resources.merge_adapters


def test_the_config_reference_is_generated_and_current(capsys, tmp_path):
    """docs/CONFIG.md is what ``selfreward config --docs`` prints (``make docs``), every field in it with its type,
    default and description; ``selfreward config`` prints the resolved config as YAML that loads back to itself."""
    from orchestrator.cli import main
    from orchestrator.config import _flatten, to_plain
    from orchestrator.config_docs import config_docs

    text = config_docs()
    assert (ROOT / "docs" / "CONFIG.md").read_text() == text, "docs/CONFIG.md is stale: run `make docs`"
    for name in _flatten(to_plain(RunConfig())):
        assert f"| `{name}` |" in text, name
    assert "| `dpo.beta` | float | `0.1` | DPO inverse temperature beta. |" in text
    assert "| `iterations` | int | `2` | Self-rewarding iterations T. *resume-safe* |" in text
    assert "| `dpo.loss: cdpo` | TRL `loss_type: sigmoid` + `label_smoothing` |" in text
    assert main(["config", str(ROOT / "jobs/configs/srlm.yaml"), "dpo.beta=0.2"]) == 0
    printed = capsys.readouterr().out
    (tmp_path / "resolved.yaml").write_text(printed)
    assert load_config(tmp_path / "resolved.yaml") == load_config(ROOT / "jobs/configs/srlm.yaml", ["dpo.beta=0.2"])
