"""Shell completion: Typer's --install-completion/--show-completion, and released names for --checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from causalclip_cli.cli import _complete_checkpoint, app
from causalclip_cli.model.checkpoint import available_checkpoints

runner = CliRunner()


def test_help_lists_the_completion_options() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "--install-completion" in res.output and "--show-completion" in res.output


def test_show_completion_prints_a_bash_script(monkeypatch: pytest.MonkeyPatch) -> None:
    # Typer detects the shell from the parent process; a test run started outside a shell (nohup, an IDE)
    # has none, so the detection is pinned here.
    import typer.completion

    monkeypatch.setattr(typer.completion, "_get_shell_name", lambda: "bash")
    res = runner.invoke(app, ["--show-completion"], prog_name="causalclip")
    assert res.exit_code == 0, res.output
    assert "_CAUSALCLIP_COMPLETE" in res.output and "complete" in res.output


def test_checkpoint_names_complete() -> None:
    released = available_checkpoints()
    assert "causalclip-vitb16" in released
    assert [n for n, _ in _complete_checkpoint("")] == released
    got = _complete_checkpoint("causalclip-")
    assert {n for n, _ in got} == {n for n in released if n.startswith("causalclip-")}
    assert all(help_ == "released checkpoint" for _, help_ in got)
    assert _complete_checkpoint("no-such-name") == []


def test_checkpoint_paths_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "heads").mkdir()
    (tmp_path / "heads" / "mine.safetensors").write_bytes(b"")
    (tmp_path / "heads" / "notes.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    assert _complete_checkpoint("./he") == [("./heads" + os.sep, "folder")]
    assert _complete_checkpoint("./heads/") == [("./heads/mine.safetensors", "checkpoint file")]
    assert _complete_checkpoint(str(tmp_path / "heads" / "m")) == [
        (str(tmp_path / "heads" / "mine.safetensors"), "checkpoint file")]


@pytest.mark.parametrize("command", ["scan", "info", "eval"])
def test_the_shell_gets_the_names(command: str) -> None:
    """What bash asks for on <TAB>: click's completion protocol, through the real entry point."""
    env = {**os.environ, "_CAUSALCLIP_COMPLETE": "complete_bash", "COMP_WORDS": f"causalclip {command} -c causalclip-",
           "COMP_CWORD": "3"}
    code = "import sys; sys.argv[0] = 'causalclip'; from causalclip_cli.cli import main; main()"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    names = set(out.stdout.split())
    assert "causalclip-vitb16" in names, (out.stdout, out.stderr)
    assert "linear-vitb16" not in names
