"""After the FAQ's stories (this directory's modules run before this one, in one process
whose registry every in-process service counts in), no metric label holds a person,
phone, document, enterprise code or token. Alone, it plays a few stories first.
tests/observability checks each process's own exporter the same way."""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest

from tests.e2e.story import Bureau, Person, new_uscc
from tests.harness.labels import label_values, looks_personal


def test_no_metric_label_looks_like_a_personal_number_or_token(bureau: Bureau) -> None:
    person = bureau.register(Person("标签甲"))
    bureau.login(person)
    code = new_uscc()
    bureau.new_enterprise(code, person)
    bureau.login(person, "ENTRY_ENTERPRISE", enterprise_code=code)
    for _ in range(5):
        bureau.start_login(person, password="Wrong.pass1")
    exposition = generate_latest(REGISTRY).decode()
    labels = list(label_values(exposition))
    assert any(name.startswith("etax_auth_logins_started") for name, _, _ in labels)
    offending = [entry for entry in labels if looks_personal(entry[2])]
    assert not offending, offending
