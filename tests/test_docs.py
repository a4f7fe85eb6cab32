"""The documentation holds together: links resolve, the README stays a doorway, every setting is documented.

No database: these read files only, so they pass the same way on PostgreSQL and SQLite.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from integrity.conf import SETTINGS
from integrity.settings_doc import COMMAND, committed_tables, render_tables

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
CONFIGURATION = ROOT / "docs" / "configuration.md"
SITE_SETTINGS = ROOT / "marketdata_site" / "settings.py"
README_MAX_BYTES = 12 * 1024

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^()\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)
# marketdata_site/settings.py reads Django's and django-q2's settings with env helpers:
# envstr("SECRET_KEY", …), envint("Q_WORKERS", …), envlist(…), envrate(…), envproxyheader(…)
ENV_READ = re.compile(r"\benv[a-z]*\(\s*[\"']([A-Z][A-Z0-9_]+)[\"']")


def prose(text: str) -> str:
    """The text with fenced code blocks removed (a link inside a code sample is not a link)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for _, title in HEADING.findall(prose(path.read_text(encoding="utf-8"))):
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def relative_links(path: Path) -> list[str]:
    text = INLINE_CODE.sub("", prose(path.read_text(encoding="utf-8")))
    return [target for target in LINK.findall(text)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto: are not checked


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            broken.append(f"{target} (no file {destination.relative_to(ROOT) if destination.is_relative_to(ROOT) else destination})")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target} (no heading #{anchor} in {destination.relative_to(ROOT)})")
    return broken


CODE_PATH = re.compile(r"`((?:integrity|marketdata_site|bench|docs|tests)/[\w./-]*)`")


def missing_code_paths(path: Path) -> list[str]:
    """Repository paths named in code spans (`integrity/series.py`) that do not exist.

    A test file counts by its name anywhere under tests/ (the suite's folders may be regrouped).
    """
    missing = []
    for name in sorted(set(CODE_PATH.findall(path.read_text(encoding="utf-8")))):
        target = ROOT / name
        if name.startswith("tests/") and name.endswith(".py"):
            found = any((ROOT / "tests").rglob(Path(name).name))
        else:
            found = target.exists()
        if not found:
            missing.append(name)
    return missing


def declared_settings() -> set[str]:
    """Every setting the code declares: the app's registry (integrity.conf) and the site's env reads."""
    names = set(SETTINGS)
    names |= set(ENV_READ.findall(SITE_SETTINGS.read_text(encoding="utf-8")))
    return names


def mentioned(name: str, text: str) -> bool:
    return re.search(rf"(?<![A-Z0-9_]){re.escape(name)}(?![A-Z0-9_])", text) is not None


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_an_existing_file_and_heading(path):
    assert broken_links(path) == [], f"{path.relative_to(ROOT)} has broken links"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_the_docs_name_exists(path):
    assert missing_code_paths(path) == [], f"{path.relative_to(ROOT)} names files that do not exist"


def test_the_link_checker_sees_links_and_anchors():
    # Guards the checker itself: the README links into docs/, and known anchors resolve.
    assert "docs/configuration.md" in relative_links(README)
    assert "market-data-providers" in anchors(CONFIGURATION)
    assert "ccxt-any-exchange-the-ccxt-library-supports" in anchors(ROOT / "docs" / "providers.md")


def test_readme_is_at_most_12_kib():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes, more than {README_MAX_BYTES}: it is a doorway (what it is, quick start, "
        "architecture sketch, where to look); move details into docs/"
    )


def test_every_declared_setting_is_documented_in_configuration_md():
    text = CONFIGURATION.read_text(encoding="utf-8")
    names = declared_settings()
    assert {"BACKFILL_BATCH_SIZE", "SECRET_KEY", "Q_WORKERS"} <= names  # the sources were read
    missing = sorted(name for name in names if not mentioned(name, text))
    assert missing == [], f"settings missing from docs/configuration.md: {', '.join(missing)}"


def test_each_setting_has_one_row_in_configuration_md():
    rows = [line for line in CONFIGURATION.read_text(encoding="utf-8").splitlines() if line.startswith("| `")]
    first_cells = [row.split(" | ")[0] for row in rows]
    counts = {name: sum(mentioned(name, cell) for cell in first_cells) for name in declared_settings()}
    assert {name: n for name, n in counts.items() if n > 1} == {}


def test_the_settings_tables_are_the_ones_generated_from_integrity_conf():
    committed = committed_tables(CONFIGURATION.read_text(encoding="utf-8"))
    assert committed == render_tables(), (
        f"docs/configuration.md's settings tables differ from integrity.conf.SETTINGS: run `{COMMAND}` "
        "to regenerate them (edit a setting's default or meaning in integrity/conf.py, not in the docs)"
    )


def test_the_generated_tables_name_every_setting_of_integrity_conf():
    generated = render_tables()
    assert [name for name in SETTINGS if not mentioned(name, generated)] == []


def test_run_all_prints_the_last_measured_table_from_the_benchmarks_json(tmp_path):
    # bench/README.md's table is printed by run_all.py --markdown, not typed: from each benchmark's JSON line.
    saved = tmp_path / "bench.out"
    saved.write_text(
        "cleanup benchmark: PostgreSQL 15.20, database marketdata_bench, autovacuum on\n"
        + json.dumps({"benchmark": "cleanup", "errors": [], "postgresql": "15.20 (Debian)",
                      "summary": [{"benchmark": "`bench_cleanup.py`, 1,000 candles, 1 % dup",
                                   "figure": "cleanup / raw DELETE = 0.54", "target": "≤ 1.5"}]}) + "\n"
        + json.dumps({"benchmark": "api", "errors": ["RuntimeError: boom"], "summary": []}) + "\n",
        encoding="utf-8",
    )
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--markdown", "--from-json", str(saved)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("## Last measured (") and "PostgreSQL 15.20" in line for line in lines)
    assert "| `bench_cleanup.py`, 1,000 candles, 1 % dup | cleanup / raw DELETE = 0.54 | ≤ 1.5 |" in lines
    assert "| `bench_api.py` | failed: RuntimeError: boom | |" in lines
