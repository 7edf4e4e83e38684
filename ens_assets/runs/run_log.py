"""The CLI's Dagster logger: short progress lines on the console, everything (traces included) in a log file.

Dagster's default console logger prints each failed step's full stack trace (several hundred lines for one
failure); a CLI user needs the asset, the partition and the cause, and a file to open for the rest.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import dagster as dg

LOG_SUBDIR = "logs"
_META = "dagster_meta"  # the attribute Dagster's log manager puts its structured record metadata on


def new_log_path(work: Path, command: str) -> Path:
    """workdir/logs/<UTC time>-<command>.log, unique per CLI invocation."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder = Path(work) / LOG_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stamp}-{command}.log"
    n = 1
    while path.exists():
        n += 1
        path = folder / f"{stamp}-{command}-{n}.log"
    return path


class _ConsoleFilter(logging.Filter):
    """User messages (context.log.*) only; engine events (step failures with their traces) only when verbose."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        meta = getattr(record, _META, None) or {}
        if self.verbose:
            return True
        # "Dependencies for step X failed" is the engine restating a failure the summary already names.
        engine_echo = str(meta.get("orig_message", "")).startswith("Dependencies for step")
        return meta.get("dagster_event") is None and not engine_echo


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, _META, None) or {}
        if meta.get("dagster_event") is not None:  # verbose mode: the full engine message, trace included
            return record.getMessage()
        where = meta.get("step_key") or meta.get("job_name") or "run"
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"      {where}: {level}{meta.get('orig_message', record.getMessage())}"


@dg.logger(
    config_schema={
        "log_file": dg.Field(str, description="where every record, traces included, is appended"),
        "verbose": dg.Field(bool, default_value=False, description="also print engine events and traces"),
        "log_level": dg.Field(str, default_value="INFO", description="the console's threshold"),
    },
    description="ens-assets CLI logger: progress lines on stdout, the full log in workdir/logs/.",
)
def cli_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    config = init_context.logger_config
    logger = logging.Logger("ens_assets.cli", level=logging.DEBUG)
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(logging.DEBUG if config["verbose"] else config["log_level"])
    console.addFilter(_ConsoleFilter(config["verbose"]))
    console.setFormatter(_ConsoleFormatter())
    logger.addHandler(console)
    log_file = logging.FileHandler(config["log_file"], encoding="utf-8")
    log_file.setLevel(logging.DEBUG)
    log_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(log_file)
    return logger


def with_cli_logger(defs: dg.Definitions) -> dg.Definitions:
    """The definitions with the CLI logger as every job's default logger, named `console` like Dagster's own."""
    return dg.Definitions.merge(defs, dg.Definitions(loggers={"console": cli_logger}))


def cli_logger_config(log_file: Path, verbose: bool) -> dict:
    return {"loggers": {"console": {"config": {"log_file": str(log_file), "verbose": verbose, "log_level": "INFO"}}}}
