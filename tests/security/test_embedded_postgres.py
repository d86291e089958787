"""The embedded PostgreSQL (finding 6 of issue #40): only the user running IOC gets in, and ``ioc up`` keeps
it running like every other child.

It trusted every local OS user as superuser; after ``kill -9`` nothing restarted it and a stale lock blocked a
manual start.
"""

from __future__ import annotations

import os
import signal
import stat
import time

import asyncpg
import pytest
from rich.console import Console

from shared.embedded import EmbeddedPostgres

pytestmark = pytest.mark.integration


@pytest.fixture
def pg(tmp_path):
    server = EmbeddedPostgres(tmp_path / "pgdata").start()
    yield server
    server.destroy()


async def can_log_in(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError):
        return False
    await conn.close()
    return True


async def test_only_the_generated_password_opens_the_server(pg):
    mode = stat.S_IMODE(os.stat(pg.password_file).st_mode)
    assert mode == 0o600
    assert pg.password_file.stat().st_uid == os.geteuid()
    assert await can_log_in(pg.url())
    without = f"postgresql://postgres@{pg.host}:{pg.port}/postgres"
    assert not await can_log_in(without)
    wrong = f"postgresql://postgres:not-the-password@{pg.host}:{pg.port}/postgres"
    assert not await can_log_in(wrong)
    # The Unix socket (in the data directory) asks for the password too.
    assert not await can_log_in(f"postgresql://postgres@/postgres?host={pg.data_dir}&port={pg.port}")


async def test_a_cluster_created_with_trust_is_converted_at_its_next_start(pg):
    pg.stop()
    (pg.data_dir / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\nlocal all all trust\n")
    pg.password_file.unlink()
    pg.start()
    assert pg.password_file.exists()
    assert await can_log_in(pg.url())
    assert not await can_log_in(f"postgresql://postgres@{pg.host}:{pg.port}/postgres")


async def test_ioc_up_restarts_a_killed_postgres_over_its_stale_lock(pg, tmp_path):
    from ioc.runner import Center

    center = Center(state_dir=tmp_path, simulators=False, scale=0.0, fresh=False, console=Console(quiet=True))
    center.postgres = pg
    pid = pg._proc.pid
    os.kill(pid, signal.SIGKILL)  # as the finding did: the postmaster only
    pg._proc.wait()
    assert (pg.data_dir / "postmaster.pid").exists()  # the lock a crash leaves
    center.supervise_infrastructure()
    assert pg.running and pg._proc.pid != pid
    assert await can_log_in(pg.url())
    center.stop()  # stopped with the center
    assert not pg.running


async def test_an_orphaned_server_of_the_same_data_directory_is_stopped_before_a_start(pg):
    orphan = pg._proc
    pg._proc = None  # a new `ioc up` that does not know the running server
    again = EmbeddedPostgres(pg.data_dir, port=pg.port).start()
    try:
        deadline = time.monotonic() + 10
        while orphan.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert orphan.poll() is not None
        assert await can_log_in(again.url())
    finally:
        again.stop()
