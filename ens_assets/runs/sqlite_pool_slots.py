"""Dagster's SQLite event log with pool slots claimed atomically, so the `gpu` pool of one holds on one machine.

Dagster claims a pool slot with `SELECT ... FOR UPDATE SKIP LOCKED` and then `UPDATE ... WHERE id = <slot>`, one
autocommitted statement each. Postgres locks the row in between; SQLite ignores FOR UPDATE, so two steps that
claim at the same moment can both read the same free slot, both write it and both run: two training steps on
one GPU (seen in ens_assets_tests/orchestration/test_gpu_pool.py under load). Here the write is a compare-and-set
(`... AND step_key IS NULL`): the step whose write changes no row did not get the slot and waits, as Dagster
already does for a full pool. dagster_home/dagster.yaml selects this class; Dagster is pinned to 1.13 because
it reaches into the storage's tables.
"""

from __future__ import annotations

import os

from dagster._config import Field, StringSource
from dagster._core.storage.event_log.schema import ConcurrencySlotsTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sqlalchemy_compat import db_select
from dagster._serdes import ConfigurableClassData
from dagster._utils.concurrency import ConcurrencySlotStatus


class SqliteEventLogStorageWithAtomicSlots(SqliteEventLogStorage):
    """SqliteEventLogStorage. base_dir defaults to $DAGSTER_HOME/history/runs, where Dagster keeps it: the
    instance config names no folder, so every process (webserver, daemon, run workers, CLI) must run with
    DAGSTER_HOME set to the instance's folder, as `DagsterInstance.get()` already requires."""

    def __init__(self, base_dir: str | None = None, inst_data: ConfigurableClassData | None = None):
        if not base_dir:
            home = os.environ.get("DAGSTER_HOME")
            if not home:
                raise RuntimeError(
                    f"{type(self).__name__} keeps the event log under $DAGSTER_HOME/history/runs, and DAGSTER_HOME "
                    "is not set: export DAGSTER_HOME=<the folder holding dagster.yaml> (make ui does: dagster_home/)"
                )
            base_dir = os.path.join(home, "history", "runs")
        super().__init__(base_dir, inst_data=inst_data)

    @classmethod
    def config_type(cls):
        return {"base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, **config_value)

    def _claim_concurrency_slot(self, concurrency_key: str, run_id: str, step_key: str) -> ConcurrencySlotStatus:
        with self.index_connection() as conn:
            free = conn.execute(
                db_select([ConcurrencySlotsTable.c.id])
                .select_from(ConcurrencySlotsTable)
                .where(
                    (ConcurrencySlotsTable.c.concurrency_key == concurrency_key)
                    & ConcurrencySlotsTable.c.step_key.is_(None)
                    & (ConcurrencySlotsTable.c.deleted == False)  # noqa: E712
                )
                .limit(1)
            ).fetchone()
            if not free or not free[0]:
                return ConcurrencySlotStatus.BLOCKED
            return self.claim_slot_if_free(conn, free[0], run_id, step_key)

    @staticmethod
    def claim_slot_if_free(conn, slot_id: int, run_id: str, step_key: str) -> ConcurrencySlotStatus:
        """Take the slot only if nobody took it since it was read free (the compare-and-set)."""
        updated = conn.execute(
            ConcurrencySlotsTable.update()
            .values(run_id=run_id, step_key=step_key)
            .where((ConcurrencySlotsTable.c.id == slot_id) & ConcurrencySlotsTable.c.step_key.is_(None))
        ).rowcount
        return ConcurrencySlotStatus.CLAIMED if updated else ConcurrencySlotStatus.BLOCKED
