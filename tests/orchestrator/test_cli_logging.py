"""The run's log goes through the standard logging module: stdout, message only; --quiet and --verbose set its level."""

import logging

import pytest

from orchestrator.cli import main
from tests import ROOT

CONFIG = str(ROOT / "jobs" / "configs" / "tiny-cpu.yaml")


@pytest.mark.parametrize("flag, shown", [([], {"info", "warning"}), (["--quiet"], {"warning"}),
                                         (["-v"], {"debug", "info", "warning"})])
def test_quiet_and_verbose_choose_what_the_run_logs(flag, shown, tmp_path, capsys):
    # A refused override: the flags are read, the log is set up, and nothing is computed (exit 2).
    assert main(["run", CONFIG, "--run-dir", str(tmp_path / "run"), *flag, "no.such_field=1"]) == 2
    assert not (tmp_path / "run").exists()
    capsys.readouterr()
    log = logging.getLogger("orchestrator.loop")
    for level in ("debug", "info", "warning"):
        getattr(log, level)(f"a {level} line")
    out = capsys.readouterr().out.splitlines()
    assert out == [f"a {level} line" for level in ("debug", "info", "warning") if level in shown]


def test_quiet_and_verbose_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as e:
        main(["status", "somewhere", "-q", "-v"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
