import json

import pytest

from orchestrator.data import DataError, load_prompts, prompt_id, prompts_for_iteration
from orchestrator.models import ModelError, resolve_model_path
from tests.e2e.helpers import ROOT


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_shipped_tiny_set_loads_with_answers():
    t = load_prompts(ROOT / "jobs" / "data" / "tiny.jsonl")
    assert t.num_rows == 40
    assert sum(a is not None for a in t["answer"].to_pylist()) == 20
    assert len(set(t["prompt_id"].to_pylist())) == 40


def test_ids_are_stable_hashes_or_given(tmp_path):
    t = load_prompts(_write(tmp_path / "p.jsonl", [{"prompt": "hi"}, {"prompt": "yo", "id": 7, "answer": 3}]))
    assert t.to_pylist() == [{"prompt_id": prompt_id("hi"), "prompt": "hi", "answer": None},
                             {"prompt_id": "7", "prompt": "yo", "answer": "3"}]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([], "no prompts"),
        (["{not json"], r"p.jsonl:1: not valid JSON"),
        ([{"prompt": "a"}, {"text": "b"}], r"p.jsonl:2: field 'prompt'"),
        ([{"prompt": "   "}], r"p.jsonl:1: field 'prompt'"),
        ([{"prompt": "a"}, {"prompt": "a"}], r"p.jsonl:2: duplicate prompt id .* line 1"),
        (["[1, 2]"], "expected a JSON object"),
    ],
)
def test_bad_prompt_files_name_file_and_line(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        load_prompts(_write(tmp_path / "p.jsonl", rows))


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_prompts(tmp_path / "nope.jsonl")
    bad = tmp_path / "b.jsonl"
    bad.write_bytes(b'{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match="UTF-8"):
        load_prompts(bad)


def test_iterations_walk_a_seeded_permutation(tmp_path):
    t = load_prompts(_write(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(10)]))
    a, b = (prompts_for_iteration(t, i, 4, seed=1)["prompt"].to_pylist() for i in (1, 2))
    assert len(set(a) | set(b)) == 8  # fresh prompts until the set is used up
    assert prompts_for_iteration(t, 1, 4, seed=1)["prompt"].to_pylist() == a
    assert len(prompts_for_iteration(t, 3, 4, seed=1)) == 4  # wraps around


def test_model_path_errors(tmp_path):
    with pytest.raises(ModelError, match="no such directory"):
        resolve_model_path(str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model_path(str(tmp_path))
