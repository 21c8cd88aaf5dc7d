"""The command line: errors are one line with exit code 2 (the demo: tests/test_demo.py)."""

import pytest

from gligen_ext.cli import main


def test_unknown_command_exits_2():
    with pytest.raises(SystemExit) as error:
        main(["nonsense"])
    assert error.value.code == 2
