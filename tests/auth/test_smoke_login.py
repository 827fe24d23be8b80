from __future__ import annotations

from tests.auth.platform import Platform


def test_smoke(platform: Platform) -> None:
    person = platform.person()
    session = platform.login(person)
    assert session.person_id == person.person_id
