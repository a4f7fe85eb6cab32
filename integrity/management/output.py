"""Helpers shared by the commands."""

from __future__ import annotations

import logging
import sys


def keep_stdout_for_json(options) -> None:
    """With ``--format json`` stdout carries only the JSON document: move log output to stderr.

    Logs go to stdout by default (12-factor); a command whose stdout is parsed must not interleave
    them with its result.
    """
    if options.get("format") != "json":
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is sys.stdout:
            handler.setStream(sys.stderr)
