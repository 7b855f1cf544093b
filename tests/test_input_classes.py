"""The classes of bad input of docs/RELIABILITY.md's second pass, each through the CLI entry point (``tests.refusals``:
exit 2, the culprit named, no traceback, nothing created or changed, Ray never started), grouped by class:

1. operating-system errors the input causes     5. a run dir half made (a full disk at each write)
2. text that cannot be encoded                  6. limits on what an input may cost
3. the model's config.json                      7. the run dir's lock, checked before Ray
4. numbers YAML or the libraries read otherwise 8. reference answers, cluster files, !!binary
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import unicodedata
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import cli, inputs
from orchestrator.cli import main
from orchestrator.config import load_config
from orchestrator.rewards.judge import PAIRWISE, RUBRIC
from orchestrator.run.lock import RunLock
from orchestrator.run.rundir import RunDir
from tests import ROOT
from tests.refusals import Case, model_copy, refused, run, tree
from workers.storage import Storage

LLAMA = ROOT / "jobs" / "models" / "llama-3.1-8b-instruct.config.json"
LLAMA_PLAN = ROOT / "jobs" / "configs" / "llama8b-1x8gpu.yaml"


def _jsonl(case: Case, name: str, *lines: str) -> Path:
    """A prompt file of raw JSON lines (escapes such as \\ud800 as written) and four good prompts."""
    path = case.root / name
    good = [json.dumps({"prompt": f"How many legs has a {a}?", "answer": str(n)})
            for a, n in (("cat", 4), ("bird", 2), ("spider", 8), ("fish", 0))]
    path.write_text("\n".join([*lines, *good]) + "\n")
    return path


@pytest.fixture
def mount(tmp_path):
    """A folder on a 4 MiB tmpfs of its own (root only: skipped where mounting is not allowed); unmounted after."""
    where = tmp_path / "mnt"
    where.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"mounting a tmpfs is not allowed here ({e})")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


# --- 1. operating-system errors caused by the input ---------------------------------------------------------------

def test_a_run_dir_that_is_a_dangling_link(capsys, case):
    (case.root / "dangling").symlink_to(case.root / "nowhere")
    refused(capsys, case, run(case, run_dir=str(case.root / "dangling")), "--run-dir", "symbolic link", "nowhere")
    refused(capsys, case, run(case, run_dir=str(case.root / "dangling" / "run")), "symbolic link", "does not exist")


@pytest.mark.parametrize("field", ["data.prompts", "eval.verifiable", "eval.injections", "model.path"])
def test_a_path_too_long_names_its_field(capsys, case, field):
    err = refused(capsys, case, run(case, f"{field}={'a' * 5000}.jsonl"), field, "File name too long")
    assert len(err) < 600  # the path is shown cut, not echoed whole


def test_a_run_dir_or_config_path_too_long(capsys, case):
    refused(capsys, case, run(case, run_dir=str(case.root / ("r" * 5000))), "--run-dir", "File name too long")
    refused(capsys, case, ["run", "c" * 5000 + ".yaml"], "config file", "File name too long")


@pytest.mark.parametrize("command", ["status", "report", "compare"])
def test_the_other_commands_on_a_path_too_long(capsys, case, command):
    argv = [command, str(case.root / ("r" * 5000))] + (["--out", str(case.root / "c.md")] if command == "compare" else [])
    err = refused(capsys, case, argv, "File name too long")
    assert len(err) < 800


def test_paths_through_a_file_or_a_loop_of_links(capsys, case):
    refused(capsys, case, run(case, f"data.prompts={case.prompts}/more.jsonl"), "data.prompts", "Not a directory")
    (case.root / "loop.jsonl").symlink_to(case.root / "loop.jsonl")
    refused(capsys, case, run(case, f"data.prompts={case.root / 'loop.jsonl'}"), "data.prompts", "symbolic links")


def test_a_prompt_file_that_fails_to_read(capsys, case):
    eio = case.root / "eio.jsonl"
    eio.symlink_to("/proc/self/mem")  # a regular file whose first page cannot be read: EIO
    refused(capsys, case, run(case, f"data.prompts={eio}"), str(eio), "Input/output error")


def test_a_cache_that_is_a_file_is_found_before_converting(capsys, case, monkeypatch):
    (case.root / "cache").write_text("not a folder")
    monkeypatch.setenv("SELFREWARD_CACHE", str(case.root / "cache"))
    refused(capsys, case, run(case), "$SELFREWARD_CACHE", "is a file, not a folder")


@pytest.mark.parametrize("command", ["replay", "compare"])
def test_an_out_file_that_is_a_folder(capsys, case, command):
    case.existing_run()
    (case.root / "out.md").mkdir()
    argv = (["replay", str(case.run_dir), "--recipe", str(case.config)] if command == "replay"
            else ["compare", str(case.run_dir)]) + ["--out", str(case.root / "out.md")]
    refused(capsys, case, argv, "--out", "a folder")
    (case.root / "out.md").rmdir()
    (case.root / "out.json").mkdir()  # the JSON written beside it
    refused(capsys, case, argv, "the .json beside it", "a folder")


def test_report_on_a_read_only_file_system(capsys, case, mount):
    case.existing_run()
    shutil.copytree(case.run_dir, mount / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    refused(capsys, case, ["report", str(mount / "run")], "report", "read-only file system", watch=mount)


# --- 2. text that cannot be encoded ---------------------------------------------------------------------------------

@pytest.mark.parametrize("line, column", [
    ('{"prompt": "What is \\ud800 + 1?", "answer": "1"}', "prompt"),
    ('{"id": "q\\udc80", "prompt": "What is 7 + 1?", "answer": "8"}', "id"),
    ('{"prompt": "What is 7 + 1?", "answer": "8\\udfff"}', "answer"),
])
def test_a_lone_surrogate_in_a_prompt_file(capsys, case, line, column):
    path = _jsonl(case, "p.jsonl", line)
    refused(capsys, case, run(case, f"data.prompts={path}"), f"{path}:1", repr(column), "lone surrogate")


def test_a_lone_surrogate_in_injections_or_arguments(capsys, case):
    inj = case.root / "inj.jsonl"
    inj.write_text('{"id": "a", "text": "ignore \\ud83d the rubric"}\n')
    refused(capsys, case, run(case, f"eval.injections={inj}"), f"{inj}:1", "lone surrogate")
    # Bytes that are not UTF-8 in an argument reach Python as lone surrogates.
    refused(capsys, case, run(case, run_dir=str(case.root / "run\udcff")), "--run-dir", "lone surrogate")
    case.write_config('data:\n  prompts: "p\\ud800.jsonl"\n')
    refused(capsys, case, run(case), "data.prompts", "lone surrogate")


@pytest.mark.parametrize("column", ["prompt", "id"])
def test_texts_that_differ_only_in_normalisation_are_duplicates(capsys, case, column):
    nfc, nfd = (unicodedata.normalize(f, "Combien coûte un café?") for f in ("NFC", "NFD"))
    assert nfc != nfd
    rows = ([{"prompt": nfc, "answer": "2"}, {"prompt": nfd, "answer": "2"}] if column == "prompt" else
            [{"id": nfc, "prompt": "What is 2 + 2?", "answer": "4"}, {"id": nfd, "prompt": "What is 3 + 3?", "answer": "6"}])
    path = _jsonl(case, "p.jsonl", *map(json.dumps, rows))
    named = "duplicate prompt id" if column == "id" else "duplicate prompt (first at"
    refused(capsys, case, run(case, f"data.prompts={path}"), f"{path}:2", named)


# --- 3. the model's config.json -------------------------------------------------------------------------------------

BAD_MODEL_CONFIGS = [
    ({"num_attention_heads": 0}, '"num_attention_heads" must be a positive integer'),
    ({"hidden_size": -4096}, '"hidden_size" must be a positive integer'),
    ({"num_hidden_layers": True}, '"num_hidden_layers" must be a positive integer, got True'),
    ({"vocab_size": 1.5e5}, '"vocab_size" must be a positive integer'),
    ({"intermediate_size": "14336"}, '"intermediate_size" must be a positive integer'),
    ({"num_key_value_heads": 7}, '"num_key_value_heads" (7) must divide'),
    ({"num_attention_heads": 24, "head_dim": None}, '"num_attention_heads" (24) must divide "hidden_size"'),
    ({"tie_word_embeddings": "yes"}, '"tie_word_embeddings" must be true or false'),
    ({"architectures": "LlamaForCausalLM"}, '"architectures" must be a list of names'),
    ({"text_config": [1]}, '"text_config" must be an object'),
]


@pytest.mark.parametrize("change, named", BAD_MODEL_CONFIGS)
def test_plan_checks_every_model_field_it_reads(capsys, case, change, named):
    config = {**json.loads(LLAMA.read_text()), **change}
    path = case.root / "config.json"
    path.write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    refused(capsys, case, ["plan", str(LLAMA_PLAN), "--model-config", str(path)], str(path), named)


@pytest.mark.parametrize("change, named", BAD_MODEL_CONFIGS[:3] + BAD_MODEL_CONFIGS[5:6])
def test_run_checks_the_model_fields_before_ray(capsys, case, tiny_model_path, change, named):
    folder = model_copy(case, tiny_model_path)
    config = {**json.loads((folder / "config.json").read_text()), **change}
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps(config))
    refused(capsys, case, run(case, f"model.path={folder}"), "config.json", named)


def test_a_model_config_nested_deep_or_too_large(capsys, case):
    deep = case.root / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    refused(capsys, case, ["plan", str(LLAMA_PLAN), "--model-config", str(deep)], str(deep), "nested too deeply")
    big = case.root / "big.json"
    big.write_text(json.dumps({**json.loads(LLAMA.read_text()), "pad": "x" * inputs.MAX_MODEL_CONFIG_BYTES}))
    err = refused(capsys, case, ["plan", str(LLAMA_PLAN), "--model-config", str(big)], str(big), "at most")
    assert len(err) < 600


def test_a_context_longer_than_the_models(capsys, case, tiny_model_path):
    folder = model_copy(case, tiny_model_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1024}))
    refused(capsys, case, run(case, f"model.path={folder}"), "model.max_model_len=2048", "max_position_embeddings 1024")


# --- 4. numbers that YAML or the libraries read differently -----------------------------------------------------

@pytest.mark.parametrize("text, field, value", [
    ("seed: 0042", "seed", 42), ("seed: 0x2A", "seed", 42), ("seed: 0o52", "seed", 42), ("seed: 4_2", "seed", 42),
    ("data: {columns: {prompt: no}}", "data.columns.prompt", "no"),
    ("data: {columns: {prompt: 2024-01-02}}", "data.columns.prompt", "2024-01-02"),
    ("dpo: {learning_rate: 1e-4}", "dpo.learning_rate", 1e-4),
])
def test_numbers_and_words_are_read_as_a_person_means_them(case, text, field, value):
    case.write_config(text + "\n")
    for cfg in (load_config(case.config), load_config(None, [f"{field}={text.rsplit(': ', 1)[1].rstrip('}')}"])):
        got = cfg
        for part in field.split("."):
            got = getattr(got, part)
        assert got == value


def test_texts_that_look_like_numbers_survive_the_run_dirs_config_yaml(case):
    """config.yaml is written so that it reads back as written (and as YAML 1.1 readers read it)."""
    texts = {"prompt": "0o17", "answer": "1e5", "id": "off", "kind": "2024-01-02"}
    cfg = load_config(case.config, [f"data.columns.{k}='{v}'" for k, v in texts.items()])
    rd = RunDir(case.run_dir)
    rd.open(cfg, {"x": "1"})
    rd.close()
    assert RunDir(case.run_dir).check(cfg)  # resumable: the frozen config equals it
    assert yaml.safe_load((case.run_dir / "config.yaml").read_text())["data"]["columns"] == texts


@pytest.mark.parametrize("override, named", [
    ("iterations=1:30", "iterations"),  # YAML 1.1's sexagesimal 90
    ("seed=4294967296", "seed"), ("seed=-1", "seed"),  # numpy takes 0 .. 2**32 - 1
    ("generation.max_tokens=99999999999", "generation.max_tokens"),
    ("dpo.epochs=2147483648", "larger than 2147483647"),
    ("data.prompts=!!binary cHJvbXB0cy5qc29ubA==", "!!binary"),
    ("data.prompts=!!timestamp 2024-01-02", "!!timestamp"),
    ("lora.target_modules=!!set {q_proj: null}", "!!set"),
])
def test_numbers_and_tags_the_libraries_cannot_take(capsys, case, override, named):
    refused(capsys, case, run(case, override), named)


# --- 5. a run dir half made -----------------------------------------------------------------------------------------

def test_a_full_disk_at_each_write_of_the_creation_leaves_a_run_dir_the_same_command_resumes(capsys, case, mount,
                                                                                             monkeypatch):
    """A tmpfs filled to leave 0, 1, 2, ... pages: each attempt fails at a later write of the run dir's creation (and
    of the run), exit 1 naming the file; once space is freed the same command finishes the run."""
    from orchestrator import loop
    from tests.orchestrator.standins import StandInBackend

    monkeypatch.setattr(cli, "_init_ray", lambda address: None)
    monkeypatch.setattr(loop, "RayBackend", StandInBackend)
    argv = run(case, run_dir=str(mount / "run"))
    filler = mount / "filler"
    page = os.statvfs(mount).f_frsize
    failures = []
    for pages in range(8):
        shutil.rmtree(mount / "run", ignore_errors=True)
        filler.unlink(missing_ok=True)
        free = os.statvfs(mount).f_bavail * page
        filler.write_bytes(b"\0" * (free - pages * page))
        rc = main(argv)
        err = capsys.readouterr().err
        if rc == 0:
            break
        assert rc == 1 and "No space left on device" in err and f"cannot write {mount / 'run'}/" in err, err
        assert "Traceback" not in err
        failures.append(err.split("cannot write ")[1].split(":")[0])
        filler.unlink()
        assert main(argv) == 0, capsys.readouterr().err  # the same command, with space again
        capsys.readouterr()
        assert (mount / "run" / "state.json").is_file() and (mount / "run" / "iter_001" / "adapter").is_dir()
    assert len(set(failures)) >= 3, failures  # the lock, config.yaml, state.json, ... each failed once


def test_a_folder_with_other_files_is_still_never_written_over(capsys, case):
    case.run_dir.mkdir()
    (case.run_dir / "config.yaml").write_text("mine: 1\n")
    refused(capsys, case, run(case), "is not empty and has no state.json")


# --- 6. limits on what an input may cost ------------------------------------------------------------------------

def test_a_config_file_too_large_is_refused_unparsed_and_unechoed(capsys, case):
    case.write_config("data:\n  prompts: " + "x" * inputs.MAX_CONFIG_BYTES + "\n")
    err = refused(capsys, case, run(case), str(case.config), "a config may hold at most")
    assert len(err) < 600


def test_long_values_are_shown_cut(capsys, case):
    err = refused(capsys, case, run(case, "dpo.loss=" + "x" * 50_000), "dpo.loss", "50000 characters")
    assert len(err) < 1500
    err = refused(capsys, case, run(case, "x" * (inputs.MAX_OVERRIDE_CHARS + 1)), "longer than")
    assert len(err) < 600


def test_thousands_of_bad_fields_are_named_by_their_first(capsys, case):
    case.write_config("".join(f"field_{i}: {i}\n" for i in range(5000)))
    err = refused(capsys, case, run(case), "5000 errors, the first 20 shown", "field_0")
    assert len(err) < 3000


def test_a_csv_field_as_long_as_a_prompt_may_be(case):
    from orchestrator.data import load_prompts

    path = case.root / "long.csv"
    path.write_text("prompt,answer\n" + "What? " * 40_000 + ",1\n")  # 240,000 characters: past csv's own limit
    assert len(load_prompts(path)["prompt"][0].as_py()) == 240_000


def test_prompts_too_long_or_too_many(capsys, case, monkeypatch):
    path = _jsonl(case, "long.jsonl", json.dumps({"prompt": "Why? " * (inputs.MAX_PROMPT_CHARS // 5 + 1)}))
    refused(capsys, case, run(case, f"data.prompts={path}"), f"{path}:1", "characters long; at most")
    monkeypatch.setattr("orchestrator.data.MAX_PROMPTS", 3)  # the same check as at 1,000,000, on a small file
    refused(capsys, case, run(case), "more than 3 prompts", "data.prompts")


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=200))
def test_the_byte_bound_never_undercounts_tokens(tiny_tokenizer, text):
    """Prompts are sized by a bound (``most_tokens``) and counted only when it passes the context: never below."""
    from workers.tokens import most_tokens, prompt_token_ids, template_tokens

    text = text.encode("utf-8", "replace").decode("utf-8")
    exact = len(prompt_token_ids(tiny_tokenizer, text)) - template_tokens(tiny_tokenizer)
    assert most_tokens(tiny_tokenizer, text) >= exact


def test_sizing_by_the_bound_keeps_and_cuts_what_exact_counting_does(tiny_tokenizer):
    import pyarrow as pa

    from orchestrator.data import PROMPT_SCHEMA, TokenBudget, fit_to_context

    texts = [("Explain this. " * n).strip() for n in range(1, 400, 7)]
    table = pa.Table.from_pylist([{"prompt_id": str(i), "prompt": t, "answer": None, "kind": None}
                                  for i, t in enumerate(texts)], schema=PROMPT_SCHEMA)
    budget = TokenBudget(tiny_tokenizer, 128, 96, 96, 1024, RUBRIC, PAIRWISE)

    class Exact(TokenBudget):
        def _need(self, text, extra):
            from workers.tokens import prompt_token_ids
            return len(prompt_token_ids(self.tokenizer, text)) + extra

    exact = Exact(tiny_tokenizer, 128, 96, 96, 1024, RUBRIC, PAIRWISE)
    for policy in ("skip", "truncate"):
        for need in ("training", "instruction"):
            got = fit_to_context(table, getattr(budget, need), 1024, policy, budget.shorten, "p")
            want = fit_to_context(table, getattr(exact, need), 1024, policy, exact.shorten, "p")
            assert got[0].equals(want[0]) and got[1] == want[1]
            assert (0 < got[1]["kept"] < len(texts)) if policy == "skip" else got[1]["truncated"] > 0


# --- 7. the lock, before Ray ----------------------------------------------------------------------------------------

def test_a_locked_run_dir_is_refused_before_ray(capsys, case):
    case.existing_run()
    lock = RunLock(Storage(case.run_dir))
    lock.acquire()
    try:
        before = tree(case.root)
        refused(capsys, case, run(case), "in use by another run", str(os.getpid()))
        assert tree(case.root) == before
    finally:
        lock.release()


# --- 8. smaller -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer", ["1 234", "1\u00a0234", "1\u202f234", "1\u2009234", "12 345 678.5"])
def test_an_si_grouped_reference_answer_is_graded_as_its_number(answer):
    from orchestrator.evaluation.answers import grade, is_numeric

    value = answer.replace(" ", "").replace("\u00a0", "").replace("\u202f", "").replace("\u2009", "")
    assert is_numeric(answer)
    assert grade(f"The answer is {value}.", answer, "What is it?").correct
    assert grade(f"The answer is {float(value):,}.", answer, "What is it?").correct
    assert not grade("The answer is 1.", answer, "What is it?").correct


@pytest.mark.parametrize("change, named", [
    (lambda c: c["available_node_types"]["gpu_8x"].update(max_workers=-2), "available_node_types.gpu_8x.max_workers"),
    (lambda c: c.update(max_workers="four"), "max_workers must be a whole number"),
    (lambda c: c["available_node_types"]["gpu_8x"]["resources"].update(GPU=True), "gpu_8x.resources.GPU"),
    (lambda c: c["available_node_types"].update(head=[1]), "available_node_types.head is not a node type"),
])
def test_a_cluster_file_names_its_bad_field(capsys, case, change, named):
    spec = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    change(spec)
    path = case.root / "cluster.yaml"
    path.write_text(yaml.safe_dump(spec))
    err = refused(capsys, case, ["plan", str(LLAMA_PLAN), "--cluster", str(path), "--model-config", str(LLAMA)], named)
    assert "resources.engines" not in err


def test_binary_and_dates_in_a_cluster_file(capsys, case):
    path = case.root / "cluster.yaml"
    path.write_text((ROOT / "cluster.yaml").read_text() + "\nextra: !!binary aGk=\n")
    refused(capsys, case, ["plan", str(LLAMA_PLAN), "--cluster", str(path), "--model-config", str(LLAMA)], "!!binary")
