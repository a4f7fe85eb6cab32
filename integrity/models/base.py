"""What the table modules share: the CHECK constraint that pins a column to its enumeration, the
asset classes (instruments and backfills both carry one), and the error a refused state change raises
(backfill lifecycle and anomaly review alike).

Enumerations are ``TextChoices``; a label is written only where it is not the member name in title case
(Django derives that one).
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q


def choices_check(field: str, choices: type[models.TextChoices], name: str) -> models.CheckConstraint:
    """A CHECK constraint: ``field`` holds one of ``choices``' values."""
    return models.CheckConstraint(condition=Q(**{f"{field}__in": choices.values}), name=name)


class AssetClass(models.TextChoices):
    EQUITY = "equity"
    CRYPTO = "crypto"
    FOREX = "forex"


class InvalidTransition(Exception):
    """A state change that the lifecycle does not allow (terminal states are final)."""
