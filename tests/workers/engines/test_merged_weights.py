"""``merged_weights``: the base checkpoint with a PEFT LoRA update merged in, checked before any tensor is read."""

import json

import pytest
import torch
from safetensors.torch import save_file

from workers.merge import merged_weights

Q = "model.layers.0.self_attn.q_proj.weight"
O = "model.layers.0.self_attn.o_proj.weight"
PEFT = "base_model.model.model.layers.0.self_attn.q_proj"


@pytest.fixture
def folders(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = {Q: torch.randn(6, 4, generator=g), O: torch.randn(4, 6, generator=g), "model.norm.weight": torch.ones(4)}
    (tmp_path / "base").mkdir()
    save_file(dict(list(base.items())[:2]), str(tmp_path / "base" / "model-00001-of-00002.safetensors"))
    save_file(dict(list(base.items())[2:]), str(tmp_path / "base" / "model-00002-of-00002.safetensors"))
    a, b = torch.randn(2, 4, generator=g), torch.randn(6, 2, generator=g)

    def adapter(name, **config):
        folder = tmp_path / name
        folder.mkdir()
        save_file({f"{PEFT}.lora_A.weight": a, f"{PEFT}.lora_B.weight": b}, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 8, "bias": "none", **config}))
        return str(folder)

    return str(tmp_path / "base"), base, a, b, adapter


def test_the_update_is_added_to_the_adapted_modules_only(folders):
    base_dir, base, a, b, adapter = folders
    merged = dict(merged_weights(base_dir, adapter("plain")))
    assert set(merged) == set(base)  # every tensor of every shard, under its checkpoint name
    assert torch.allclose(merged[Q], base[Q] + 8 / 2 * (b @ a), atol=1e-6)
    assert not torch.allclose(merged[Q], base[Q], atol=1e-3)
    assert torch.equal(merged[O], base[O]) and torch.equal(merged["model.norm.weight"], base["model.norm.weight"])
    rs = dict(merged_weights(base_dir, adapter("rslora", use_rslora=True)))
    assert torch.allclose(rs[Q], base[Q] + 8 / 2 ** 0.5 * (b @ a), atol=1e-6)  # rsLoRA scales by alpha / sqrt(r)
    plain = dict(merged_weights(base_dir, None))
    assert all(torch.equal(plain[k], base[k]) for k in base)  # no adapter: the base model itself


@pytest.mark.parametrize("config, message", [
    ({"use_dora": True}, "use_dora=True cannot be merged here; set resources.adapter_serving=lora"),
    ({"bias": "lora_only"}, "bias='lora_only' cannot be merged here"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save=['lm_head'] cannot be merged here"),
])
def test_an_adapter_that_cannot_be_merged_exactly_is_refused(folders, config, message):
    base_dir, *_, adapter = folders
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        merged_weights(base_dir, adapter("odd", **config))


def test_a_module_the_base_lacks_is_refused_before_any_tensor_is_read(folders, tmp_path):
    base_dir, base, *_, adapter = folders
    (tmp_path / "small").mkdir()
    save_file({O: base[O]}, str(tmp_path / "small" / "model.safetensors"))
    with pytest.raises(ValueError, match=f"adapts {Q}, which the base model in .*small does not have"):
        merged_weights(str(tmp_path / "small"), adapter("plain"))
    embedding = tmp_path / "embedding"
    embedding.mkdir()
    save_file({"base_model.model.model.embed_tokens.lora_embedding_A": torch.ones(2, 4)},
              str(embedding / "adapter_model.safetensors"))
    (embedding / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 8}))
    with pytest.raises(ValueError, match="embed_tokens.lora_embedding_A is not a LoRA A/B matrix of a linear layer"):
        merged_weights(base_dir, str(embedding))
    with pytest.raises(ValueError, match="none in .*empty; set resources.adapter_serving=lora"):
        (tmp_path / "empty").mkdir()
        merged_weights(str(tmp_path / "empty"), None)
