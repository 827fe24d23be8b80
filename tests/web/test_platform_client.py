"""The web service's one client of the platform (services.web.platform), against the real
gateway: the platform's refusals keep their reason and FAQ text; the gateway's own
refusals (no token) read as "your session ended"."""

from __future__ import annotations

import pytest

from services.web.platform import Caller, LoginTarget, Platform, PlatformError
from tests.e2e.story import Bureau, Person
from tests.web.site import Site


@pytest.fixture
def platform(site: Site) -> Platform:
    client = Platform(site.gateway.public_address, timeout=10)
    yield client  # type: ignore[misc]
    client.close()


def test_a_refusal_keeps_its_reason_and_the_faq_text(platform: Platform) -> None:
    stranger = Person("路人")
    with pytest.raises(PlatformError) as refused:
        platform.start_login(
            Caller("203.0.113.9"), LoginTarget("ENTRY_NATURAL_PERSON"), stranger.number, "x"
        )
    assert (refused.value.reason, refused.value.text) == ("USER_NOT_REGISTERED", "该用户未注册")


def test_the_gateways_own_refusal_of_a_missing_token_ends_the_session(platform: Platform) -> None:
    with pytest.raises(PlatformError) as refused:
        platform.profile(Caller("203.0.113.9"), "")
    assert refused.value.session_ended
    assert refused.value.text == "登录已失效，请重新登录"


def test_a_form_value_outside_the_contract_is_bad_input_not_a_crash(platform: Platform) -> None:
    with pytest.raises(PlatformError) as refused:
        platform.start_login(Caller("203.0.113.9"), LoginTarget("ENTRY_NONSENSE"), "a", "b")
    assert (refused.value.reason, refused.value.field) == ("INVALID_ARGUMENT", "entry")


def test_identities_start_with_the_natural_person(platform: Platform, bureau: Bureau) -> None:
    """F3 (issue 12): ListMyIdentities lists the natural person first, and SwitchIdentity
    takes an item back as it was listed."""
    person = bureau.register(Person("自然人身份"))
    session = bureau.login_by_face(person)
    listed = platform.identities(Caller("203.0.113.9"), session.token)
    assert listed[0].entry == "ENTRY_NATURAL_PERSON"
    switched = platform.switch_identity(Caller("203.0.113.9"), session.token, listed[0])
    assert switched.identity.entry == "ENTRY_NATURAL_PERSON"
