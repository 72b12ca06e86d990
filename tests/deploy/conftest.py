"""Fixtures of the deploy tests: the official bundle JSON schema, a copy of the bundle to break, and no
BUNDLE_VAR_* from the caller's environment."""

import os
from pathlib import Path

import pytest

from bundle_helpers import SCHEMA


@pytest.fixture
def schema() -> Path:
    if not SCHEMA.is_file():
        pytest.skip(f"official bundle JSON schema not found at {SCHEMA} (../shared/databricks)")
    return SCHEMA


@pytest.fixture
def project(bundle_copy) -> Path:
    """A copy of everything the bundle reads, to break."""
    return bundle_copy


@pytest.fixture(autouse=True)
def _no_bundle_vars(monkeypatch):
    for key in [k for k in os.environ if k.startswith("BUNDLE_VAR_")]:
        monkeypatch.delenv(key)
