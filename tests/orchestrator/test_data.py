import csv
import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.data import build_verifiable
from orchestrator.config import ColumnsConfig
from orchestrator.data import DataError, load_prompts, normalised, prompt_id, prompts_for_iteration
from orchestrator.evaluation.answers import KINDS, grade
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
    for name in ("verifiable_train.jsonl", "verifiable_heldout.jsonl"):
        assert {r["kind"] for r in _rows(name)} == set(KINDS), name
    # Held-out means held out: no prompt of a held-out split is trained on by any shipped training set, not even
    # with case, whitespace or punctuation changed.
    training = instr_train | ver_train | tiny
    folded = {normalised(t) for t in training}
    for held in (instr_held, ver_held):
        assert not {normalised(t) for t in held} & folded
    assert not instr_held & ver_held
    for name in ("verifiable_train.jsonl", "verifiable_heldout.jsonl"):
        t = load_prompts(DATA / name, require_answers=True)
        assert t.num_rows == len(_texts(name))


def _rows(name):
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


def test_shipped_sets_are_what_their_builders_write():
    from jobs.data import build_instructions, build_tiny

    for builder, stem in ((build_instructions, "instructions"), (build_verifiable, "verifiable")):
        train, held = builder.build()
        assert _rows(f"{stem}_train.jsonl") == train
        assert _rows(f"{stem}_heldout.jsonl") == held
    assert _rows("tiny.jsonl") == build_tiny.build()


def test_verifiable_splits_share_no_task_signature():
    """Kind and operands (names ignored, commutative operands in either order) never cross from training to held-out."""
    train = _rows("verifiable_train.jsonl") + [r for r in _rows("tiny.jsonl") if "answer" in r]
    held = _rows("verifiable_heldout.jsonl")
    assert not {r["signature"] for r in train} & {r["signature"] for r in held}
    assert len({r["signature"] for r in held}) == len(held)  # no twin inside the held-out set either
    for r in train + held:
        # The signature holds every number and quoted word of the prompt (so no operand is left out of it) and
        # no name or item (so renaming does not make a new task).
        question = r["prompt"].split(" End your reply")[0]
        numbers = sorted(re.findall(r"\d+", question))
        assert sorted(re.findall(r"\d+", r["signature"].split(":", 1)[1])) == numbers, r
        assert all(w in r["signature"] for w in re.findall(r"'([a-z]+)'", question)), r
        assert not set(re.findall(r"[A-Za-z]+", r["signature"])) & set(build_verifiable.NAMES + build_verifiable.ITEMS), r
        value = "word" if r["kind"] == "backwards" else "letter" if r["kind"] == "last_letter" else "number"
        assert r["prompt"].endswith(f"End your reply with a line of the form 'Answer: <{value}>'."), r
    rng = random.Random(0)
    sums = [build_verifiable.single_digit_sum(rng) for _ in range(100)] + [build_verifiable.word_sum(rng) for _ in range(100)]
    for a in sums:
        for b in sums:
            x, y = (sorted(map(int, re.findall(r"\d+", t.prompt.split(" End")[0]))) for t in (a, b))
            assert (a.signature == b.signature) == (x == y)  # "4 + 9", "9 + 4" and Ana's 4 and 9 apples: one task


def test_verifiable_answers_are_right():
    for row in _rows("verifiable_heldout.jsonl") + _rows("verifiable_train.jsonl"):
        # The requested final-answer line with the reference answer is graded correct, by the explicit rule.
        g = grade(f"Answer: {row['answer']}", row["answer"], row["prompt"], row["kind"])
        assert g.correct and g.rule == "explicit", row
        q = row["prompt"]
        if q.startswith("What is (") and "*" in q:
            x, rest = q[len("What is ("):].split(" + ")
            y, z = rest.split(") * ")
            assert int(row["answer"]) == (int(x) + int(y)) * int(z.split("?")[0])


def test_held_out_prompts_equal_to_training_ones_up_to_case_and_punctuation_are_refused(tmp_path):
    from orchestrator.config import load_config
    from orchestrator.evaluation.stage import load_eval_sets

    train = _write(tmp_path / "train.jsonl", [{"prompt": "Explain gravity to a child."}, {"prompt": "What is 9 - 4?"}])
    held = _write(tmp_path / "held.jsonl", [{"prompt": "What is 9 + 4?"}, {"prompt": "  explain GRAVITY, to a child  "}])
    cfg = load_config(None, [f"data.prompts={train}", f"eval.instructions={held}", "eval.verifiable=null"])
    with pytest.raises(DataError, match=r"eval.instructions \(.*held.jsonl\) row 2 and data.prompts \(.*train.jsonl\) row 1 "
                                        r"hold the same prompt once case, whitespace and punctuation are folded"):
        load_eval_sets(cfg, load_prompts(train))
    # Operators are not punctuation: "9 + 4" held out beside "9 - 4" trained is fine.
    fine = _write(tmp_path / "fine.jsonl", [{"prompt": "What is 9 + 4?"}, {"prompt": "What is (9 - 4) * 2?"}])
    cfg = load_config(None, [f"data.prompts={train}", f"eval.instructions={fine}", "eval.verifiable=null"])
    assert load_eval_sets(cfg, load_prompts(train))[0].instructions.num_rows == 2


def test_ids_are_stable_hashes_or_given(tmp_path):
    t = load_prompts(_write(tmp_path / "p.jsonl", [{"prompt": "hi"}, {"prompt": "yo", "id": 7, "answer": 3}]))
    assert t.to_pylist() == [{"prompt_id": prompt_id("hi"), "prompt": "hi", "answer": None, "kind": None},
                             {"prompt_id": "7", "prompt": "yo", "answer": "3", "kind": None}]


ROWS = [{"q": "What is 2 + 2?", "sol": "4", "key": "a"}, {"q": "Say hi.", "sol": None, "key": "b"}]
MAPPED = ColumnsConfig(prompt="q", answer="sol", id="key")
EXPECTED = [{"prompt_id": "a", "prompt": "What is 2 + 2?", "answer": "4", "kind": None},
            {"prompt_id": "b", "prompt": "Say hi.", "answer": None, "kind": None}]


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
    # Read with datasets itself: a dataset saved after a selection holds only the rows selected.
    datasets.Dataset.from_list(ROWS * 3).select(range(len(ROWS))).save_to_disk(str(tmp_path / "sel"))
    assert load_prompts(tmp_path / "sel", MAPPED).to_pylist() == EXPECTED
    (tmp_path / "ds" / "dataset_info.json").write_text("{broken")
    with pytest.raises(DataError, match=r"ds: datasets cannot load it"):
        load_prompts(tmp_path / "ds", MAPPED)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([], "no prompts"),
        (["{not json"], r"p.jsonl:1: not valid JSON"),
        ([{"prompt": "a"}, {"text": "b"}], r"p.jsonl:2: column 'prompt' must be a string with visible text, got None"),
        ([{"prompt": "   "}], r"p.jsonl:1: column 'prompt'"),
        ([{"prompt": 5}], r"p.jsonl:1: column 'prompt' must be a string with visible text, got 5"),
        ([{"prompt": "a"}, {"prompt": "a"}], r"p.jsonl:2: duplicate prompt id .* \(first at .*p.jsonl:1\)"),
        ([{"prompt": "a", "id": 1}, {"prompt": "a", "id": 2}], r"p.jsonl:2: duplicate prompt \(first at .*p.jsonl:1\)"),
        ([{"prompt": "a", "answer": [1]}], r"p.jsonl:1: column 'answer' must be str or int or float, got list"),
        ([{"prompt": "a", "id": 1.5}], r"p.jsonl:1: column 'id' must be str or int"),
        ([{"prompt": "a", "answer": "1", "kind": "sums"}],
         r"p.jsonl:1: column 'kind' is 'sums', a kind without validated grading rules; expected one of single_digit_sum"),
        ([{"prompt": "a", "kind": 3}], r"p.jsonl:1: column 'kind' must be str, got int"),
        (["[1, 2]"], "expected a JSON object"),
    ],
)
def test_bad_prompt_files_name_file_line_and_column(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        load_prompts(_write(tmp_path / "p.jsonl", rows))


def test_tabular_errors_name_row_and_column(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"q": "fine"}, {"q": None}]), tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"n.parquet: row 2: column 'q' must be a string with visible text, got None"):
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


def _hub_cache(cache, repo: str, kind: str, files: dict[str, bytes | Path]) -> None:
    """A Hugging Face cache holding one snapshot of ``repo`` (the layout huggingface_hub reads offline; a file given
    as a Path is linked, as the cache links its snapshots to blobs)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"{kind}s--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    for name, data in files.items():
        (root / "snapshots" / commit / name).parent.mkdir(parents=True, exist_ok=True)
        target = root / "snapshots" / commit / name
        target.symlink_to(data) if isinstance(data, Path) else target.write_bytes(data)


def test_hub_names_resolve_offline_from_the_cache_and_say_why_not(tmp_path, monkeypatch, tiny_model_path):
    """model.path ``org/name`` and a prompt file ``hf://datasets/org/name/file``, read from the Hugging Face cache with
    HF_HUB_OFFLINE set (nothing is downloaded); a name not cached is a clear error naming it and the cache."""
    from orchestrator.models import check_model

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    _hub_cache(cache, "selfreward/tiny", "model", {p.name: p for p in Path(tiny_model_path).iterdir() if p.is_file()})
    _hub_cache(cache, "selfreward/prompts", "dataset",
               {"data/train.jsonl": "".join(json.dumps(r) + "\n" for r in ROWS).encode()})
    folder = resolve_model_path("selfreward/tiny")
    assert folder.is_dir() and str(folder).startswith(str(cache)) and resolve_model_path("hf://selfreward/tiny") == folder
    check_model(folder, False, ("q_proj",), 1024)
    assert load_prompts("hf://datasets/selfreward/prompts/data/train.jsonl", MAPPED).to_pylist() == EXPECTED
    with pytest.raises(ModelError, match="'selfreward/other': no local folder has that name, and as a Hub model id the "
                                         "model is not in the Hugging Face cache .* HF_HUB_OFFLINE is set"):
        resolve_model_path("selfreward/other")
    with pytest.raises(DataError, match="hf://datasets/selfreward/prompts/data/test.jsonl.*not in the Hugging Face cache"):
        load_prompts("hf://datasets/selfreward/prompts/data/test.jsonl")
    (tmp_path / "selfreward" / "tiny").mkdir(parents=True)  # a local folder of that name wins over the Hub
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model_path("selfreward/tiny")
