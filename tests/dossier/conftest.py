"""Local fixtures of the dossier tests.

``make_key`` is overridden here: the session ``platform_pool`` has no JSON codec, so the platform's
``issue_test_key`` cannot pass principal attributes (a dict) for the ``jsonb`` column through it. This pool
is built with ``shared.db.create_pool``, which installs the codec services use.
"""

from __future__ import annotations

import pytest

from shared.db import create_pool
from shared.testing import issue_test_key


@pytest.fixture(scope="session")
async def json_pool(db_settings, platform_pool):
    pool = await create_pool(db_settings)
    yield pool
    await pool.close()


@pytest.fixture
async def make_key(json_pool):
    """``await make_key(["dossier:write"], kind="agency", attributes={"agency": ...})`` → (principal, key)."""

    async def make(scopes, **kw):
        return await issue_test_key(json_pool, scopes, **kw)

    return make
