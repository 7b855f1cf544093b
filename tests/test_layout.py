"""The arrows run one way: orchestrator -> workers; the pure parts import neither torch nor Ray."""

import ast
import subprocess
import sys

import pytest

from tests import ROOT


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_workers_never_import_the_orchestrator():
    bad = [(str(p.relative_to(ROOT)), m) for p in (ROOT / "workers").rglob("*.py") for m in _imports(p)
           if m.split(".")[0] == "orchestrator"]
    assert bad == []


@pytest.mark.parametrize("module", ["orchestrator.rewards.selection", "orchestrator.rewards.judge",
                                    "orchestrator.reporting.replay", "orchestrator.reporting.report",
                                    "orchestrator.evaluation.labels", "orchestrator.resources.plan"])
def test_pure_modules_load_neither_torch_nor_ray(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'ray', 'vllm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
