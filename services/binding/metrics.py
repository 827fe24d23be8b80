"""The binding service's domain counters (docs/operations.md)."""

from __future__ import annotations

from etax.binding.v1.binding_pb2 import RelationState
from etax.common.v1.types_pb2 import Role
from prometheus_client import Counter

RELATIONS = Counter(
    "etax_binding_relation_changes_total",
    "Relations changed by a person (F1, F2): confirmed, rejected, withdrawn or ended, by "
    "role (legal_representative, financial_officer, tax_officer, ...).",
    ["role", "state"],
)


def relation_changed(role: int, state: int) -> None:
    RELATIONS.labels(
        _name(Role, role, "ROLE_"), _name(RelationState, state, "RELATION_STATE_")
    ).inc()


def _name(enum: object, value: int, prefix: str) -> str:
    try:
        name: str = enum.Name(value)  # type: ignore[attr-defined]
    except ValueError:
        return "unknown"
    return name.removeprefix(prefix).lower()
