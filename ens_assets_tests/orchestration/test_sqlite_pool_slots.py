"""The repo's SQLite instance claims a pool slot by compare-and-set: of two steps that both read the gpu slot free
(the interleaving that let two gpu steps run at once on Dagster's stock SQLite event log), only the first gets it."""

from __future__ import annotations

import dagster as dg
from dagster._core.storage.event_log.schema import ConcurrencySlotsTable
from dagster._core.storage.sqlalchemy_compat import db_select
from dagster._utils.concurrency import ConcurrencySlotStatus

from ens_assets.runs.sqlite_pool_slots import SqliteEventLogStorageWithAtomicSlots
from ens_assets_tests.instance_home import make_dagster_home


def _slots(storage) -> list[tuple]:
    with storage.index_connection() as conn:
        return conn.execute(
            db_select([ConcurrencySlotsTable.c.id, ConcurrencySlotsTable.c.run_id, ConcurrencySlotsTable.c.step_key])
            .where(ConcurrencySlotsTable.c.concurrency_key == "gpu")
        ).fetchall()


def test_two_claims_of_one_free_slot_give_it_once(tmp_path, monkeypatch) -> None:
    home = make_dagster_home(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # where the storage keeps its files, as in every Dagster process
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, SqliteEventLogStorageWithAtomicSlots), "dagster_home/dagster.yaml selects it"
        assert storage._base_dir == str(home / "history" / "runs")
        storage.set_concurrency_slots("gpu", 1)
        ((slot_id, holder, _),) = _slots(storage)
        assert holder is None
        # Both steps read the slot free, then both write: the second write must change nothing.
        with storage.index_connection() as conn:
            first = storage.claim_slot_if_free(conn, slot_id, "run-a", "checkpoints")
            second = storage.claim_slot_if_free(conn, slot_id, "run-b", "checkpoints")
        assert (first, second) == (ConcurrencySlotStatus.CLAIMED, ConcurrencySlotStatus.BLOCKED)
        assert _slots(storage) == [(slot_id, "run-a", "checkpoints")]
        # Through the storage's own claim path: the pool is full now.
        assert storage._claim_concurrency_slot("gpu", "run-c", "checkpoints") == ConcurrencySlotStatus.BLOCKED
        storage.free_concurrency_slots_for_run("run-a")
        assert storage._claim_concurrency_slot("gpu", "run-c", "checkpoints") == ConcurrencySlotStatus.CLAIMED
