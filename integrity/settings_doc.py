"""The tables of the app's settings in docs/configuration.md, generated from ``integrity.conf``.

``integrity.conf`` declares each setting's default and meaning once (``SETTINGS``, grouped by
``GROUPS``); the documentation's tables between the ``settings:start`` and ``settings:end`` marker
comments are rendered from them by ``python manage.py settings_doc`` (``--check`` only compares), and
tests/test_docs.py fails when the committed tables differ. Django's and the operators' settings
(``marketdata_site/settings.py`` only) stay hand-written around the markers.
"""

from __future__ import annotations

from pathlib import Path

from .conf import GROUPS, SETTINGS, Setting

START = "<!-- settings:start -->"
END = "<!-- settings:end -->"
COMMAND = "python manage.py settings_doc"
CONFIGURATION_MD = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def shown_default(setting: Setting) -> str:
    """The default as a table cell: ``empty`` for nothing, code for a value."""
    if setting.shown_default is not None:
        return setting.shown_default
    default = setting.default
    if default in ("", [], {}):
        return "empty"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, float):
        return f"`{default:g}`"
    if isinstance(default, list):
        return f"`{','.join(default)}`"
    return f"`{default}`"


def render_tables() -> str:
    """What stands between the markers: one section (heading, prose, table) per group."""
    parts = [f"<!-- generated from integrity/conf.py by `{COMMAND}`: edit there, not here -->"]
    for group, (title, prose) in GROUPS.items():
        parts += ["", f"## {title}", ""]
        if prose:
            parts += [prose, ""]
        parts += ["| variable | default | meaning |", "|---|---|---|"]
        parts += [f"| {s.variable or f'`{s.name}`'} | {shown_default(s)} | {s.doc} |"
                  for s in SETTINGS.values() if s.group == group]
    return "\n".join(parts)


def _split(text: str) -> tuple[str, str, str]:
    before, start, rest = text.partition(START)
    block, end, after = rest.partition(END)
    if not start or not end:
        raise ValueError(f"{CONFIGURATION_MD.name} must hold the marker comments {START} and {END}")
    return before, block.strip("\n"), after


def committed_tables(text: str) -> str:
    """The tables as the documentation holds them now (the text between the markers)."""
    return _split(text)[1]


def with_tables(text: str) -> str:
    """The documentation with its tables regenerated; the prose around the markers kept."""
    before, _, after = _split(text)
    return f"{before}{START}\n{render_tables()}\n\n{END}{after}"
