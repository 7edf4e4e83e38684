"""A new MLflow SQLite store for a test in a millisecond instead of seconds.

MLflow builds a SQLite store by running its alembic migrations (3-15 s of a 2-core machine per store, and most
end-to-end tests start with a store of their own). `new_tracking_store` copies one store that the platform's
own `ensure_store` built once per test process, then points the copy's Default experiment at the copy's own
artifact folder, so the file is what `ensure_store` would have left at that path. Tests of store creation
itself (test_mlflow_store.py) keep creating theirs.
"""

from __future__ import annotations

import atexit
import shutil
import sqlite3
import tempfile
from functools import lru_cache
from pathlib import Path

from ens_assets.mlflow_store import default_artifact_location, ensure_store


@lru_cache(maxsize=1)
def _template() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="ens-assets-mlflow-template-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    db = folder / "mlflow.db"
    ensure_store(f"sqlite:///{db}")
    return db


def new_tracking_store(db: Path) -> str:
    """The sqlite URI of a new, fully migrated MLflow store at `db` (which must not exist yet)."""
    db = Path(db)
    if db.exists():
        raise FileExistsError(f"{db}: a tracking store is already there")
    db.parent.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{db}"
    tmp = db.parent / f".{db.name}.copy.tmp"
    shutil.copyfile(_template(), tmp)
    connection = sqlite3.connect(tmp)
    try:
        with connection:
            connection.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                               (f"{default_artifact_location(uri)}/0",))
    finally:
        connection.close()
    tmp.replace(db)
    return uri
