"""Area codes for tests, taken from the loaded hierarchy (``IOC_ADMIN_HIERARCHY``, the two-tier 2025 one by
default) instead of written as literals, so a test means the same under either hierarchy.

Both hierarchies have a top area called Ba Đình and one called Hoàn Kiếm (districts in 2019, wards in 2025):
``BA_DINH``/``HOAN_KIEM`` are their codes (``BD``/``HK`` or ``00004``/``00070``), ``BA_DINH_UNIT``/``HOAN_KIEM_UNIT``
a smallest unit of each (``BD-01``/``HK-01`` in 2019; in 2025 the ward itself, the registries' ``commune``).
A unit of one area is never a unit of the other, which is what tests of a refused area rely on.

Tests that are about one hierarchy pin it (``load_named("hanoi-2019")`` or ``IOC_ADMIN_HIERARCHY``) instead.
"""

from __future__ import annotations

from shared.areas import hanoi, load_named


def top_code(name: str) -> str:
    """The code of the loaded hierarchy's top area called ``name``."""
    area = hanoi().top_area_named(name)
    if area is None:
        raise LookupError(f"no top area named {name!r} in the loaded hierarchy")
    return area.code


def first_unit(top: str) -> str:
    """A smallest unit of a top area: its first commune (2019), the area itself (2025)."""
    return hanoi().units_of(top)[0].code


def area(district_2019: str) -> str:
    """The loaded hierarchy's top area named like the 2019 district ``district_2019``: ``TH`` in 2019, the ward
    Tây Hồ (``00103``) in 2025. For tests written with 2019 codes that mean "some area", kept readable."""
    return top_code(load_named("hanoi-2019").areas[district_2019].name)


def unit(commune_2019: str) -> str:
    """A smallest unit for the 2019 commune code ``commune_2019``: itself in 2019, in 2025 the unit of the area
    named like its district (``TH-02`` → ``00103``, the ward Tây Hồ is its own commune)."""
    if commune_2019 in hanoi().areas:
        return commune_2019
    return first_unit(area(commune_2019.split("-")[0]))


def top_codes() -> list[str]:
    """Every top area's code, sorted."""
    return sorted(a.code for a in hanoi().top_areas)


BA_DINH = top_code("Ba Đình")
HOAN_KIEM = top_code("Hoàn Kiếm")
CAU_GIAY = top_code("Cầu Giấy")
DONG_DA = top_code("Đống Đa")
BA_DINH_UNIT = first_unit(BA_DINH)
HOAN_KIEM_UNIT = first_unit(HOAN_KIEM)
CAU_GIAY_UNIT = first_unit(CAU_GIAY)
