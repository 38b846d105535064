"""Google ``userLabels`` on Service Control operations (docs/marketplaces.md §4.11).

Cloud Marketplace recommends labelling usage reports so buyers can attribute cost; it reserves
``cloudmarketplace.googleapis.com/resource_name`` and ``cloudmarketplace.googleapis.com/container_name``
(values supplied by the producer). Other keys follow Google's label syntax: 1-63 characters,
starting with a lowercase letter, of lowercase letters, digits, ``_`` and ``-``; values 0-63
characters of the same; at most 64 labels. One operation carries one label set, so a record
split over label combinations is one operation per combination.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

RESERVED_KEYS = frozenset({"cloudmarketplace.googleapis.com/resource_name",
                           "cloudmarketplace.googleapis.com/container_name"})
MAX_LABELS = 64
_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_VALUE = re.compile(r"[a-z0-9_-]{0,63}")


def label_keys_problem(keys: Sequence[str]) -> str | None:
    """Return why a listing's keys cannot be Google user labels (None: they can)."""
    if len(keys) > MAX_LABELS:
        return f"Google takes at most {MAX_LABELS} labels per operation ({len(keys)} given)"
    for key in keys:
        if key not in RESERVED_KEYS and not _KEY.fullmatch(key):
            return (f"label key {key!r}: Google label keys are 1-63 characters, a lowercase letter first, then "
                    "lowercase letters, digits, _ and - (or a reserved cloudmarketplace.googleapis.com/ key)")
    return None


def value_problem(key: str, value: str) -> str | None:
    """Return why a label value cannot be sent to Google (None: it can)."""
    if not _VALUE.fullmatch(value):
        return (f"label {key!r} value {value[:70]!r}: Google label values are 0-63 characters of lowercase letters, "
                "digits, _ and -")
    return None


def labels_problem(labels: Mapping[str, str]) -> str | None:
    """Return why a whole ``userLabels`` map is invalid (what the emulator enforces), or None."""
    problem = label_keys_problem(list(labels))
    if problem:
        return problem
    for key, value in labels.items():
        if not isinstance(value, str):
            return f"label {key!r}: values are strings"
        problem = value_problem(key, value)
        if problem:
            return problem
    return None
