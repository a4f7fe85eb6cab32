"""``manage.py settings_doc``: regenerate the app's settings tables in docs/configuration.md.

``--check`` writes nothing and exits 1 when the committed tables differ from ``integrity.conf``.
"""

from __future__ import annotations

from django.core.management.base import CommandError

from integrity.management.output import IntegrityCommand
from integrity.settings_doc import CONFIGURATION_MD, with_tables


class Command(IntegrityCommand):
    help = "Write the settings tables of docs/configuration.md from the declarations in integrity/conf.py."
    exit_codes = {
        0: "the tables were written (with --check: they match integrity.conf)",
        1: "with --check: the committed tables differ from integrity.conf",
    }

    def add_arguments(self, parser):
        parser.add_argument("--check", action="store_true", help="only compare; exit 1 when they differ")

    def handle(self, *args, **options):
        text = CONFIGURATION_MD.read_text(encoding="utf-8")
        generated = with_tables(text)
        if generated == text:
            self.stdout.write(f"{CONFIGURATION_MD.name}: the settings tables are up to date")
        elif options["check"]:
            raise CommandError(f"{CONFIGURATION_MD.name}: the settings tables differ from integrity.conf; "
                               "run: python manage.py settings_doc", returncode=1)
        else:
            CONFIGURATION_MD.write_text(generated, encoding="utf-8")
            self.stdout.write(f"{CONFIGURATION_MD.name}: the settings tables were regenerated")
