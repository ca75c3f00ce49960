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
