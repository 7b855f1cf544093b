"""Every bad input through the real CLI entry point: exit 2, the culprit named, no traceback, nothing created or changed.

Each case builds its inputs in a temporary folder, records every file under it (and under the folder a run dir
would go in) with its sha256, runs ``selfreward`` (``orchestrator.cli.main``, in process: refusals start no Ray),
and checks the exit code, the message and that the recorded tree is unchanged. docs/RELIABILITY.md lists them.
"""

from __future__ import annotations

import json
import os
import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import main
from orchestrator.config import load_config
from tests.refusals import Case, model_copy, refused, replace_file, run, tree

# --- config -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, named", [
    ("dpo.beta=.inf", "dpo.beta"), ("dpo.beta=.nan", "dpo.beta"), ("generation.top_p=nan", "generation.top_p"),
    ("iterations=true", "iterations"), ("generation.samples_per_prompt=false", "samples_per_prompt"),
    ("dpo.beta=[1", "dpo.beta=[1"), ("dpo.beta={a: 1", "dpo.beta={a: 1"),
    ("lora.target_modules=[q_proj, qkv_proj]", "lora.target_modules: 'qkv_proj'"),
    ("judge.max_tokens=4096", "judge.max_tokens"),
    ("resources.engines=64", "resources.engines=64"), ("resources.cpus_per_train_worker=500", "cpus_per_train_worker"),
    ("resources.gpus_per_engine=1", "resources.gpus_per_engine"),
])
def test_bad_config_overrides_are_refused(capsys, case, override, named):
    if override.startswith("resources.gpus") and _gpus():
        pytest.skip("this machine has a GPU")
    refused(capsys, case, run(case, override), named)


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


@pytest.mark.parametrize("text, named", [
    ("iterations: 1\niterations: 2\n", "duplicate key 'iterations'"),
    ("dpo: {beta: 0.1}\ngeneration: {max_tokens: 32}\ndpo: {loss: ipo}\n", "duplicate key 'dpo'"),
    ("dpo:\n  beta: 0.1\n  beta: 0.2\n", "duplicate key 'beta'"),
    # A billion-node alias bomb: refused at its first alias, never expanded.
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n"
                                                   for p, c in zip("abcdefgh", "bcdefghi")) + "iterations: *i\n",
     "aliases"),
    ("iterations: .inf\n", "iterations"),
    ("dpo: {beta: .nan}\n", "dpo.beta"),
    ("- just\n- a list\n", "mapping"),
    ("iterations: [1\n", "not valid YAML"),
])
def test_bad_config_files_are_refused(capsys, case, text, named):
    case.write_config(text)
    err = refused(capsys, case, run(case), named)
    assert str(case.config) in err


def test_an_unreachable_cluster_is_named_without_waiting(capsys, case):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused(capsys, case, run(case, f"resources.ray_address=127.0.0.1:{port}"), "resources.ray_address")
    refused(capsys, case, run(case, "resources.ray_address=nowhere"), "resources.ray_address")


def test_an_empty_run_dir_is_refused(capsys, case):
    refused(capsys, case, run(case, run_dir=""), "--run-dir")


# --- data ---------------------------------------------------------------------------------------------------------

def _data_case(case: Case, name: str, content: bytes | pa.Table, *overrides: str) -> list[str]:
    path = case.root / name
    if isinstance(content, pa.Table):
        pq.write_table(content, path)
    else:
        path.write_bytes(content)
    return run(case, f"data.prompts={path}", *overrides)


@pytest.mark.parametrize("name, content, named", [
    ("p.csv", b'prompt,answer\n"What is 1 + 1?,2\nWhat is 2 + 2?,4\n', "p.csv"),  # unclosed quote
    ("p.csv", b"prompt,answer,prompt\nWhat is 1 + 1?,2,x\n", "more than once"),
    ("p.jsonl", b'{"prompt": ' * 100_000 + b'"x"' + b"}" * 100_000 + b"\n", "nested too deeply"),
    ("p.jsonl", b'{"prompt": "What is 1 + 1?", "answer": NaN}\n', "'answer'"),
    ("p.jsonl", b'{"prompt": "What is 1 + 1?", "answer": Infinity}\n', "'answer'"),
    ("p.jsonl", b'{"prompt": "What is 1 + 1?", "id": ""}\n', "'id'"),
    ("p.jsonl", b'{"prompt": "What is 1 + 1?", "id": "  \\t"}\n', "'id'"),
    ("p.jsonl", '{"prompt": "\u200b\u200d\ufeff \u2060"}\n'.encode(), "visible text"),
    ("p.jsonl", b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', "p.jsonl:2: not valid UTF-8"),
])
def test_bad_data_files_are_refused(capsys, case, name, content, named):
    refused(capsys, case, _data_case(case, name, content), named)


def test_invalid_utf8_in_parquet_strings_names_the_row(capsys, case):
    bad = pa.array([b"What is 1 + 1?", b"caf\xe9 ?"], pa.binary()).view(pa.string())
    table = pa.table({"prompt": bad})
    refused(capsys, case, _data_case(case, "p.parquet", table), "p.parquet: row 2: column 'prompt' is not valid UTF-8")


def test_invalid_utf8_in_the_injections_file(capsys, case):
    bad = case.root / "inj.jsonl"
    bad.write_bytes(b'{"id": "a", "text": "\xff"}\n')
    held_out = case.root / "held_out.jsonl"
    held_out.write_text(json.dumps({"prompt": "Write a haiku."}) + "\n")
    refused(capsys, case, run(case, f"eval.injections={bad}", f"eval.instructions={held_out}"),
            "inj.jsonl:1: not valid UTF-8")


def test_a_fifo_is_never_read(capsys, case):
    fifo = case.root / "p.jsonl"
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    refused(capsys, case, run(case, f"data.prompts={fifo}"), "not a regular file")


def test_a_device_is_never_read(capsys, case):
    refused(capsys, case, run(case, "data.prompts=/dev/zero"), "/dev/zero: not a regular file")


def test_a_bom_and_unicode_line_separators_are_read_as_text(case):
    from orchestrator.data import load_prompts

    bom = case.root / "bom.csv"
    bom.write_bytes("\ufeffprompt,answer\nWhat is 1 + 1?,2\n".encode())
    assert load_prompts(bom)["prompt"].to_pylist() == ["What is 1 + 1?"]
    sep = case.root / "sep.jsonl"
    sep.write_text(json.dumps({"prompt": "Line one\u2028line two\u2029end"}, ensure_ascii=False) + "\n")
    assert load_prompts(sep)["prompt"].to_pylist() == ["Line one\u2028line two\u2029end"]


# --- model --------------------------------------------------------------------------------------------------------

def test_a_chat_template_that_cannot_render(capsys, case, tiny_model_path):
    folder = model_copy(case, tiny_model_path)
    replace_file(folder, "chat_template.jinja", "{{ raise_exception('no') }}{% for m in messages %}{{ m.content }}{% endfor %}")
    refused(capsys, case, run(case, f"model.path={folder}"), "chat template cannot render")


def test_architectures_of_null(capsys, case, tiny_model_path):
    folder = model_copy(case, tiny_model_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = [None]
    replace_file(folder, "config.json", json.dumps(cfg))
    refused(capsys, case, run(case, f"model.path={folder}"), '"architectures"')


@pytest.mark.parametrize("header", [b"\xff" * 8 + b"{}", (40).to_bytes(8, "little") + b"{not json" + b" " * 31,
                                    (60).to_bytes(8, "little") + b'{"w": {"dtype": "F32", "shape": [9], '
                                    b'"data_offsets": [0, 36]}}    '])
def test_a_corrupt_safetensors_header(capsys, case, tiny_model_path, header):
    folder = model_copy(case, tiny_model_path)
    (folder / "extra.safetensors").write_bytes(header)
    refused(capsys, case, run(case, f"model.path={folder}"), "extra.safetensors")


# --- run dir ------------------------------------------------------------------------------------------------------

def test_a_run_dir_that_is_a_file_or_under_one(capsys, case):
    case.run_dir.write_text("not a folder")
    refused(capsys, case, run(case), "is a file")
    refused(capsys, case, run(case, run_dir=str(case.run_dir / "sub")), "is a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_parent(capsys, case):
    locked = case.root / "locked"
    locked.mkdir(mode=0o555)
    refused(capsys, case, run(case, run_dir=str(locked / "run")), "is not writable")


def test_a_config_yaml_that_is_not_yaml(capsys, case):
    case.existing_run()
    (case.run_dir / "config.yaml").write_text("dpo: [\n")
    refused(capsys, case, run(case), "config.yaml is damaged")
    (case.run_dir / "config.yaml").write_text("7\n")
    refused(capsys, case, run(case), "config.yaml is damaged")


@pytest.mark.parametrize("edit, named", [
    (lambda s: s["stages"].update({"iter_001/generate": "x"}), "not a record"),
    (lambda s: s["stages"]["iter_001/generate"].update(rows="many"), "'rows'"),
    (lambda s: s["stages"]["iter_001/generate"].pop("sha256"), "fields"),
    (lambda s: s["stages"].update({"../x": s["stages"]["iter_001/generate"]}), "'../x'"),
    (lambda s: s.update(sessions={}), "'sessions'"),
    (lambda s: s.update(config_hash=None), "'config_hash'"),
])
def test_a_state_json_of_the_wrong_shape(capsys, case, edit, named):
    case.existing_run()
    case.edit_state(edit)
    refused(capsys, case, run(case), "state.json is damaged", named)
    refused(capsys, case, ["status", str(case.run_dir)], "state.json is damaged")


def test_a_torn_metrics_jsonl_is_flagged_by_status(capsys, case):
    case.existing_run()
    (case.run_dir / "metrics.jsonl").write_text('{"kind": "iteration", "iteration": 1, "pairs_ke')
    before = tree(case.root)
    assert main(["status", str(case.run_dir)]) == 2
    out = capsys.readouterr()
    assert "DAMAGED" in out.out and "metrics.jsonl" in out.out and "Traceback" not in out.err
    assert main(["status", str(case.run_dir), "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"] is None and "JSONDecodeError" in out["metrics_problem"]
    assert tree(case.root) == before


def test_a_refused_redo_leaves_state_json_as_it_was(capsys, case):
    case.existing_run()
    err = refused(capsys, case, run(case, "--redo", "iter_001/train"), "iter_001/train", "iter_001/judge")
    assert "not a committed stage" in err
    fresh = Case.__new__(Case)
    fresh.__dict__.update(case.__dict__, run_dir=case.root / "new")
    refused(capsys, case, run(fresh, "--redo", "iter_001/judge"), "no committed stage")


def test_a_branch_point_that_cannot_be_shared_is_refused(capsys, case):
    case.existing_run()  # committed: iter_001/generate, iter_001/judge
    new = str(case.root / "branch")
    source = str(case.run_dir)
    refused(capsys, case, run(case, "--from", f"{case.root}/nowhere@iter_001/judge", run_dir=new), "nowhere",
            "no state.json")
    refused(capsys, case, run(case, "--from", f"{source}@iter_001/score", run_dir=new), "iter_001/score",
            "not a committed stage", "committed: iter_001/generate, iter_001/judge")
    refused(capsys, case, run(case, "--from", f"{source}@iter_001/judge"), "that is the run dir itself")
    refused(capsys, case, run(case, "--from", f"{source}@iter_001/judge", "generation.max_tokens=7", run_dir=new),
            "generation.max_tokens: 128", "-> 7 (now), read by iter_001/generate")
    case.edit_state(lambda s: s["stages"]["iter_001/judge"].update(artifact="../outside.parquet"))
    refused(capsys, case, run(case, "--from", f"{source}@iter_001/judge", run_dir=new), "iter_001/judge",
            "refusing to read or delete it")


@pytest.mark.parametrize("target", ["file", "tree", "link"])
def test_redo_never_deletes_outside_the_run_dir(capsys, case, target):
    outside = case.root / "outside"
    (outside / "tree").mkdir(parents=True)
    (outside / "victim.txt").write_text("keep me")
    (outside / "tree" / "a.txt").write_text("keep me too")
    case.existing_run()
    if target == "link":  # an artifact inside the run dir that is a symbolic link to a folder outside
        art = case.run_dir / "iter_001" / "judgments.parquet"
        art.unlink()
        art.symlink_to(outside / "tree")
        artifact = "iter_001/judgments.parquet"
    else:
        artifact = "../outside/victim.txt" if target == "file" else "../outside/tree"
    case.edit_state(lambda s: s["stages"]["iter_001/judge"].update(artifact=artifact))
    refused(capsys, case, run(case, "--redo", "iter_001/generate"), "iter_001/judge", "outside the run directory"
            if target == "link" else "'..'")
    assert (outside / "victim.txt").read_text() == "keep me" and (outside / "tree" / "a.txt").is_file()
    # status flags the entry (and exits 2) instead of calling it ok.
    assert main(["status", str(case.run_dir)]) == 2
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "iter_001/judge" in x)
    assert "DAMAGED" in line and "refusing to read or delete" in line


def test_compare_and_replay_never_overwrite_their_markdown_with_json(capsys, case):
    case.existing_run()
    out = case.root / "x.json"
    refused(capsys, case, ["compare", str(case.run_dir), "--out", str(out)], "--out")
    refused(capsys, case, ["replay", str(case.run_dir), "--recipe", str(case.config), "--out", str(out)], "--out")


# --- properties: a clean error or an accepted input, never a traceback ------------------------------------------------

_KEYS = ["iterations", "seed", "dpo.beta", "dpo.loss", "generation.top_p", "generation.max_tokens", "judge.judge_samples",
         "selection.strategy", "resources.engines", "lora.target_modules", "data.prompts_per_iteration", "nosuch.key"]
_VALUES = st.one_of(st.text(max_size=12), st.integers(-3, 10**6).map(str), st.floats(allow_nan=True).map(str),
                    st.sampled_from(["true", "no", "~", "[", "{a: 1}", "[1, 2]", ".inf", "-.nan", "&a x", "*a",
                                     "!!python/object:os.system", "'", "0x10", "1e400"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(_KEYS), _VALUES), max_size=3))
def test_config_overrides_give_a_clean_error_or_a_config(overrides):
    from orchestrator.config import ConfigError

    try:
        load_config(None, [f"{k}={v}" for k, v in overrides])
    except ConfigError as e:
        assert str(e)


_FRAGMENTS = [b"\xef\xbb\xbf", b'"', b",", b"\n", b"\r\n", "\u2028".encode(), b"NaN", b"Infinity", b"[" * 3000,
              b'{"prompt": ', b'{"prompt": "What is 2 + 2?"', b"}", b'"id": ""', b'"answer": ', b"prompt,answer",
              b"\x00", b"\xff", "\u200b".encode(), b"null", b"true", b"1e400"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suffix=st.sampled_from([".jsonl", ".csv"]), data=st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from(_FRAGMENTS), max_size=12).map(b"".join),
    st.text(max_size=200).map(str.encode),
    st.lists(st.dictionaries(st.sampled_from(["prompt", "answer", "id", "kind", "x"]),
                             st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                                       st.lists(st.integers(), max_size=2)), max_size=4), max_size=4)
    .map(lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()),
))
def test_data_files_give_a_clean_error_or_prompts(tmp_path, suffix, data):
    from orchestrator.data import DataError, load_prompts

    path = tmp_path / f"p{suffix}"
    path.write_bytes(data)
    try:
        table = load_prompts(path)
    except DataError as e:
        assert str(path) in str(e)
    else:
        assert table.num_rows > 0
