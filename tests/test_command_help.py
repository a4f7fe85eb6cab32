"""Every command of the app documents, in its ``--help``, what ``--format`` gives (where it has the option)
and what each exit code means."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from django.core.management import get_commands, load_command_class

from integrity.management.output import IntegrityCommand, has_option
from tests.helpers import ROOT

COMMANDS = sorted(name for name, app in get_commands().items() if app == "integrity")


def help_of(name: str) -> tuple[str, argparse.ArgumentParser]:
    command = load_command_class("integrity", name)
    parser = command.create_parser("manage.py", name)
    return parser.format_help(), parser


def test_the_app_has_commands_to_check():
    assert {"backfill", "enrich", "cleanup_duplicates", "detect_anomalies", "health_check"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
class TestEveryCommandsHelp:
    def test_it_is_built_on_the_shared_base(self, name):
        assert isinstance(load_command_class("integrity", name), IntegrityCommand)

    def test_it_lists_the_exit_codes_zero_and_usage_two(self, name):
        text, _ = help_of(name)
        codes = text.split("exit codes:\n", 1)[1]
        assert codes.lstrip().startswith("0  ")
        assert "\n  2  " in codes

    def test_it_documents_format_when_the_command_takes_it(self, name):
        text, parser = help_of(name)
        if has_option(parser, "--format"):
            assert "output (--format):" in text and "  json  " in text
        else:
            assert "output (--format):" not in text


def test_a_user_sees_the_exit_codes_as_written_from_the_command_line():
    result = subprocess.run([sys.executable, "manage.py", "enrich", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    assert "exit codes:\n  0  the statistics were recomputed\n  2  the arguments are unusable" in result.stdout
    assert "output (--format):\n  text  (default)" in result.stdout
