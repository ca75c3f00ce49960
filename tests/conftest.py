"""Shared test fixtures: paths to ../shared (beside the clone, never copied in)."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures" / "stylegan2"
PHOTOS = SHARED / "photos"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    assert FIXTURES.is_dir(), f"{FIXTURES} is missing: the tests need ../shared beside the clone"
    return FIXTURES


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    assert PHOTOS.is_dir(), f"{PHOTOS} is missing: the tests need ../shared beside the clone"
    return PHOTOS


def pytest_sessionstart(session):
    """Without ../shared most tests cannot run: one message instead of a screen of errors."""
    missing = [p for p in (FIXTURES, PHOTOS) if not p.is_dir()]
    if missing:
        pytest.exit(f"the tests need {SHARED} beside the clone (the shared fixtures and photos: "
                    f"{', '.join(str(p.relative_to(SHARED)) + '/' for p in missing)} missing). Put the project's "
                    f"shared folder there: {ROOT.name}/ and shared/ side by side.", returncode=4)
