"""Valid personal and enterprise numbers for tests, distinct per serial."""

from __future__ import annotations

from etax_platform.documents import gb11643_check_character
from etax_platform.enterprise_codes import USCC_ALPHABET, uscc_check_character


def resident_id(serial: int, birth: str = "19900101", region: str = "370102") -> str:
    """An 18-digit resident identity card number with its GB 11643 check character
    (serials repeat every 1000: vary the birth date for more)."""
    first_17 = f"{region}{birth}{serial % 1000:03d}"
    return first_17 + gb11643_check_character(first_17)


def uscc(serial: int, division: str = "370102") -> str:
    """A unified social credit code (GB 32100) in the administrative division."""
    organisation = "MA" + "".join(USCC_ALPHABET[(serial // 31**i) % 31] for i in range(6, -1, -1))
    first_17 = "91" + division + organisation
    return first_17 + uscc_check_character(first_17)
