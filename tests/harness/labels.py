"""What a personal number or a secret looks like in a metric label value: a resident ID
number, a mainland phone, an email, a credit code, or a long run of letters and digits
(tokens; person, session and ticket ids)."""

from __future__ import annotations

import re
from collections.abc import Iterator

from prometheus_client.parser import text_string_to_metric_families

_PERSONAL = [
    re.compile(r"\d{17}[\dXx]"),
    re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)"),
    re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}"),
    re.compile(r"\b[0-9A-HJ-NPQRTUWXY]{2}\d{6}[0-9A-HJ-NPQRTUWXY]{10}\b"),
]
_TOKENISH = re.compile(r"[A-Za-z0-9]{16,}")


def looks_personal(value: str) -> bool:
    if any(pattern.search(value) for pattern in _PERSONAL):
        return True
    return any(sum(c.isdigit() for c in run) >= 3 for run in _TOKENISH.findall(value))


def label_values(exposition: str) -> Iterator[tuple[str, str, str]]:
    """(sample name, label, value) of every label in a scrape."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            for label, value in sample.labels.items():
                yield sample.name, label, value
