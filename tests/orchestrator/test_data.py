import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.config import ColumnsConfig
from orchestrator.data import DataError, load_prompts, prompt_id, prompts_for_iteration
from orchestrator.models import ModelError, resolve_model_path
from tests.e2e.helpers import ROOT

DATA = ROOT / "jobs" / "data"


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _texts(name):
    return {json.loads(line)["prompt"] for line in (DATA / name).read_text().splitlines()}


def test_shipped_tiny_set_loads_with_answers():
    t = load_prompts(DATA / "tiny.jsonl")
    assert t.num_rows == 40
    assert sum(a is not None for a in t["answer"].to_pylist()) == 20
    assert len(set(t["prompt_id"].to_pylist())) == 40


def test_shipped_sets_are_large_varied_and_their_splits_never_overlap():
    instr_train, instr_held = _texts("instructions_train.jsonl"), _texts("instructions_heldout.jsonl")
    ver_train, ver_held = _texts("verifiable_train.jsonl"), _texts("verifiable_heldout.jsonl")
    tiny = _texts("tiny.jsonl")
    assert len(instr_train | instr_held) >= 300
    categories = {json.loads(line)["category"] for line in (DATA / "instructions_train.jsonl").read_text().splitlines()}
    assert categories == {"writing", "explanation", "advice", "coding", "reasoning"}
    kinds = {json.loads(line)["kind"] for line in (DATA / "verifiable_heldout.jsonl").read_text().splitlines()}
    assert {"multi_step", "word_difference", "unit_conversion", "count_letter", "backwards"} <= kinds
    # Held-out means held out: no prompt of a held-out split is trained on by any shipped training set.
    training = instr_train | ver_train | tiny
    assert not instr_held & training and not ver_held & training
    assert not instr_held & ver_held
    for name in ("verifiable_train.jsonl", "verifiable_heldout.jsonl"):
        t = load_prompts(DATA / name, require_answers=True)
        assert t.num_rows == len(_texts(name))


def test_shipped_sets_are_what_their_builders_write():
    from jobs.data import build_instructions, build_verifiable

    for builder, stem in ((build_instructions, "instructions"), (build_verifiable, "verifiable")):
        train, held = builder.build()
        assert [json.loads(x) for x in (DATA / f"{stem}_train.jsonl").read_text().splitlines()] == train
        assert [json.loads(x) for x in (DATA / f"{stem}_heldout.jsonl").read_text().splitlines()] == held


def test_verifiable_answers_are_right():
    from orchestrator.answers import is_correct

    for row in map(json.loads, (DATA / "verifiable_heldout.jsonl").read_text().splitlines()):
        # A response stating exactly the reference answer is judged correct by the extractor.
        assert is_correct(f"The answer is {row['answer']}.", row["answer"]), row
    ex = {json.loads(x)["prompt"]: json.loads(x)["answer"] for x in (DATA / "verifiable_train.jsonl").read_text().splitlines()}
    for q, a in ex.items():
        if q.startswith("What is (") and "*" in q:
            x, rest = q[len("What is ("):].split(" + ")
            y, z = rest.split(") * ")
            assert int(a) == (int(x) + int(y)) * int(z.split("?")[0])


def test_ids_are_stable_hashes_or_given(tmp_path):
    t = load_prompts(_write(tmp_path / "p.jsonl", [{"prompt": "hi"}, {"prompt": "yo", "id": 7, "answer": 3}]))
    assert t.to_pylist() == [{"prompt_id": prompt_id("hi"), "prompt": "hi", "answer": None},
                             {"prompt_id": "7", "prompt": "yo", "answer": "3"}]


ROWS = [{"q": "What is 2 + 2?", "sol": "4", "key": "a"}, {"q": "Say hi.", "sol": None, "key": "b"}]
MAPPED = ColumnsConfig(prompt="q", answer="sol", id="key")
EXPECTED = [{"prompt_id": "a", "prompt": "What is 2 + 2?", "answer": "4"},
            {"prompt_id": "b", "prompt": "Say hi.", "answer": None}]


def test_every_format_with_a_column_mapping(tmp_path):
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "p.parquet")
    _write(tmp_path / "p.jsonl", ROWS)
    with open(tmp_path / "p.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["q", "sol", "key"])
        w.writeheader()
        w.writerows(ROWS)
    for name in ("p.parquet", "p.jsonl", "p.csv"):
        assert load_prompts(tmp_path / name, MAPPED).to_pylist() == EXPECTED, name


def test_a_datasets_save_to_disk_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    assert load_prompts(tmp_path / "ds", MAPPED).to_pylist() == EXPECTED
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"DatasetDict with splits \[.train.\]; point the path at one split, e.g. .*dd/train"):
        load_prompts(tmp_path / "dd", MAPPED)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([], "no prompts"),
        (["{not json"], r"p.jsonl:1: not valid JSON"),
        ([{"prompt": "a"}, {"text": "b"}], r"p.jsonl:2: column 'prompt' must be a non-empty string, got None"),
        ([{"prompt": "   "}], r"p.jsonl:1: column 'prompt'"),
        ([{"prompt": 5}], r"p.jsonl:1: column 'prompt' must be a non-empty string, got 5"),
        ([{"prompt": "a"}, {"prompt": "a"}], r"p.jsonl:2: duplicate prompt id .* \(first at .*p.jsonl:1\)"),
        ([{"prompt": "a", "id": 1}, {"prompt": "a", "id": 2}], r"p.jsonl:2: duplicate prompt \(first at .*p.jsonl:1\)"),
        ([{"prompt": "a", "answer": [1]}], r"p.jsonl:1: column 'answer' must be str or int or float, got list"),
        ([{"prompt": "a", "id": 1.5}], r"p.jsonl:1: column 'id' must be str or int"),
        (["[1, 2]"], "expected a JSON object"),
    ],
)
def test_bad_prompt_files_name_file_line_and_column(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        load_prompts(_write(tmp_path / "p.jsonl", rows))


def test_tabular_errors_name_row_and_column(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"q": "fine"}, {"q": None}]), tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"n.parquet: row 2: column 'q' must be a non-empty string, got None"):
        load_prompts(tmp_path / "n.parquet", ColumnsConfig(prompt="q"))
    with pytest.raises(DataError, match=r"n.parquet: no column 'prompt' \(set as data.columns.prompt\); the file has \['q'\]"):
        load_prompts(tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"no column 'solution' \(set as data.columns.answer\)"):
        load_prompts(tmp_path / "n.parquet", ColumnsConfig(prompt="q", answer="solution"))
    (tmp_path / "c.csv").write_text("prompt,answer\nWhat is 1+1?,2\n,3\n")
    with pytest.raises(DataError, match=r"c.csv: row 2 \(line 3\): column 'prompt'"):
        load_prompts(tmp_path / "c.csv")
    (tmp_path / "w.csv").write_text("prompt,answer\nWhat is 1+1?,2,extra\n")
    with pytest.raises(DataError, match=r"w.csv: row 1 \(line 2\): more fields than the header"):
        load_prompts(tmp_path / "w.csv")
    (tmp_path / "v.csv").write_text("prompt,answer\nWhat is 1+1?,\n")
    with pytest.raises(DataError, match=r"v.csv: row 1 \(line 2\): column 'answer' must hold the reference answer"):
        load_prompts(tmp_path / "v.csv", require_answers=True)
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(DataError, match=r"bad.parquet: not a readable Parquet file"):
        load_prompts(tmp_path / "bad.parquet")


def test_missing_unknown_and_non_utf8_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "p.txt").write_text("hello\n")
    with pytest.raises(DataError, match=r"p.txt: unknown prompt file format '.txt'; expected a .jsonl"):
        load_prompts(tmp_path / "p.txt")
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="without state.json"):
        load_prompts(tmp_path / "d")
    bad = tmp_path / "b.jsonl"
    bad.write_bytes(b'{"prompt": "ok"}\n{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match=r"b.jsonl:2: not valid UTF-8"):
        load_prompts(bad)
    bad_csv = tmp_path / "b.csv"
    bad_csv.write_bytes(b"prompt\n\xfe\n")
    with pytest.raises(DataError, match=r"b.csv:2: not valid UTF-8"):
        load_prompts(bad_csv)


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
