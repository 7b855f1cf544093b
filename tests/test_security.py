"""Security properties checked over the project's own sources and examples."""

import re
from pathlib import Path

from tests import ROOT

CODE = [p for d in ("orchestrator", "workers", "jobs", "benchmarks") for p in (ROOT / d).rglob("*.py")]
TEXT = CODE + [ROOT / "README.md", ROOT / "Makefile", ROOT / "cluster.yaml", *(ROOT / "docs").glob("*.md"),
               *(ROOT / "jobs").rglob("*.yaml"), *(ROOT / "tests").rglob("*.py"), ROOT / ".ci" / "run"]
TEXT = [p for p in TEXT if p != Path(__file__)]
ANY_ADDRESS = ".".join("0" * 4)


def _calls(pattern: str):
    for path in CODE:
        text = path.read_text()
        for m in re.finditer(pattern, text):
            # The call's text up to its closing parenthesis (calls here fit in a few lines).
            depth, end = 0, m.start()
            for end in range(m.end() - 1, len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            yield path.relative_to(ROOT), text[m.start() : end + 1]


def test_nothing_is_unpickled():
    loads = list(_calls(r"torch\.load\("))
    assert loads, "the optimizer checkpoint is read with torch.load"
    for where, call in loads:
        assert "weights_only=True" in call, (where, call)
    for path in CODE:
        text = path.read_text()
        assert not re.search(r"^\s*(import|from) (pickle|cloudpickle|dill|joblib)\b", text, re.M), path
        assert "allow_pickle=True" not in text, path


def test_remote_code_runs_only_when_the_config_opts_in():
    for where, call in _calls(r"\b(AutoTokenizer|AutoModelForCausalLM|AutoConfig)\.from_pretrained\(|\bLLM\("):
        # The bundled GGUF conversion reads a file of an installed package and runs no remote code.
        assert "trust_remote_code=" in call or "gguf_file=" in call, (where, call)
    from orchestrator.config import ModelConfig

    assert ModelConfig().trust_remote_code is False


def test_servers_and_dashboards_stay_on_loopback_in_every_example():
    for path in TEXT:
        text = path.read_text()
        assert ANY_ADDRESS not in text, path
        if path.suffix == ".py":  # commands as argument lists: a head started anywhere keeps its dashboard on loopback
            if '"start", "--head"' in text:
                assert '"--dashboard-host=127.0.0.1"' in text, path
            continue
        for line in text.splitlines():  # shell examples, one command per (folded) line
            if re.search(r"^\s*-?\s*ray start\b.*--head", line) or "--dashboard-host" in line:
                assert "--dashboard-host=127.0.0.1" in line, (path, line)
    for where, call in _calls(r"\bray\.init\("):
        if "address=" in call and "_node_ip_address" not in call:
            continue  # joining an existing cluster
        assert '_node_ip_address="127.0.0.1"' in call, (where, call)


def test_no_secret_is_read_from_config_files():
    # Credentials come from the environment (RAY_AUTH_TOKEN, cloud credentials), never from a config field.
    from orchestrator.config import RunConfig

    def names(model, prefix=""):
        for name, f in model.model_fields.items():
            yield prefix + name
            ann = f.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                yield from names(ann, prefix + name + ".")

    assert not [n for n in names(RunConfig) if re.search(r"(^|[._])(token|secret|password|api_key|credentials?)$", n, re.I)]
