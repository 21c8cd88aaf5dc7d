"""The command line: the offline demo runs, and errors are one line with exit code 2."""

import pytest

from gligen_ext.cli import main


def test_demo_runs_offline(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "injected a box adapter" in out and (tmp_path / "boxes.safetensors").is_file()


def test_unknown_command_exits_2():
    with pytest.raises(SystemExit) as error:
        main(["nonsense"])
    assert error.value.code == 2
