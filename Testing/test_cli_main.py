"""The `h3de` entry point: --help and --version import no sub-command (so they answer at once)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from H3DELandmarksLib.cli.main import SUBCOMMANDS, main

HEAVY = ("torch", "SimpleITK", "scipy", "numpy", "jsonschema", "matplotlib")
PROBE = """
import sys
from H3DELandmarksLib.cli.main import main
try:
    main({argv!r})
except SystemExit:
    pass
print(",".join(name for name in {heavy!r} if name in sys.modules))
"""


@pytest.mark.parametrize("argv", [["--help"], ["--version"]])
def test_help_and_version_import_no_heavy_library(argv):
    probe = PROBE.format(argv=argv, heavy=HEAVY)
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert output.splitlines()[-1] == ""


def test_help_lists_every_sub_command_with_its_summary(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    listing = " ".join(capsys.readouterr().out.split())
    for name, (_, summary) in SUBCOMMANDS.items():
        assert f"{name} {summary}" in listing


def test_a_sub_command_gets_its_own_options_and_an_unknown_one_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["info", "--help"])
    assert "usage: h3de info [-h] [--recursive] PATH [PATH ...]" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["detcet", "scan.nrrd"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'detcet'" in capsys.readouterr().err
