"""Commands the Makefile and DVC stages call. Every stage runs the same Dagster assets, on the instance in
$DAGSTER_HOME (the repo's dagster_home/ by default), so runs from `dvc repro`, `make demo` and the UI are
one history.

    ens-assets check                 validate params.yaml and look at the data it names
    ens-assets init DIR [--out P]    inspect a folder of your images, write a params file for it, check it
    ens-assets materialize STAGE     data | crops | train | predict | ensemble | all
    ens-assets demo                  everything, then where to look and the morning report (short)
    ens-assets report [--date D]     the morning report of a date (asset morning_report)
    ens-assets promote MEMBER        stage: cv for MEMBER in params.yaml (comments kept, validated)
    ens-assets apply-proposals       the latest report's proposals as a diff; --yes writes params.yaml
    ens-assets predict IMAGES        classify new photos (folder or CSV) with the fitted ensemble
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import warnings
from pathlib import Path

STAGES = ("data", "crops", "train", "predict", "ensemble")
REPO_ROOT = Path(__file__).resolve().parent.parent


def _instance():
    """The instance in $DAGSTER_HOME, with the gpu pool's limit of one set explicitly.

    dagster.yaml's default_limit covers pools created on first use, but two runs creating the pool at the
    same moment on a fresh SQLite instance were seen to both get a slot; an explicit limit closes that race.
    """
    import dagster as dg

    from ens_assets.defs.training_assets import GPU_POOL
    from ens_assets.runs.watchdog import reap_runs_of_dead_processes

    os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / "dagster_home"))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    instance = dg.DagsterInstance.get()
    if GPU_POOL not in instance.event_log_storage.get_concurrency_keys():
        instance.event_log_storage.set_concurrency_slots(GPU_POOL, 1)
    reap_runs_of_dead_processes(instance)
    return instance


def execute_against_code_location(job_def, instance, *, partition_key: str | None, tags: dict, run_config: dict):
    """Execute a job in this process as a run of the workspace's code location (workspace.yaml).

    `execute_in_process` records runs without a code location (repositoryOrigin null): the UI's Overview
    timeline, Jobs history and "launched by" links never show them. The run is created with the origin the
    webserver and daemon give this location (parsed from workspace.yaml, no code server started), then
    executed here with the job's in-process executor, so a CLI run reads like one launched from the UI.
    Uses Dagster internals (pinned to 1.13 in pyproject.toml) where no public API takes an origin.
    """
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME
    from dagster._core.execution.api import execute_run
    from dagster._core.execution.execute_in_process import merge_run_tags
    from dagster._core.remote_origin import RemoteJobOrigin, RemoteRepositoryOrigin
    from dagster._core.workspace.load import location_origin_from_module_name, location_origins_from_yaml_paths

    workspace = REPO_ROOT / "workspace.yaml"
    if workspace.is_file():
        (location,) = location_origins_from_yaml_paths([str(workspace)])
    else:  # a checkout without it (e.g. a DVC copy): the location `dagster dev -m ens_assets.definitions` serves
        location = location_origin_from_module_name("ens_assets.definitions", None, str(REPO_ROOT))
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME), job_def.name)
    run_tags = merge_run_tags(job_def, partition_key, tags, None, instance, run_config)
    run = instance.create_run_for_job(job_def, run_config=run_config, tags=run_tags, remote_job_origin=origin)
    return execute_run(InMemoryJob(job_def), run, instance)


class StageFailed(Exception):
    """A run of the stage failed: the runner stops there, so nothing downstream of a failure runs."""


class StageRunner:
    """Runs the plan's jobs partition by partition in this process, printing progress.

    It stops at the first failed run (printing the asset, the partition and the cause, and the log file
    holding the traces); a smoke gate that says "no" is a verdict, not a failure: the other members go on.
    """

    def __init__(self, params: Path, out=functools.partial(print, flush=True), *, verbose: bool = False, command: str = "run"):
        import dagster as dg

        from ens_assets.defs.build import build_definitions
        from ens_assets.plan import load_plan
        from ens_assets.runs.run_log import new_log_path, with_cli_logger

        # Preview/beta notices about Dagster APIs are for this project's developers, not its users.
        warnings.filterwarnings("ignore", category=dg.PreviewWarning)
        warnings.filterwarnings("ignore", category=dg.BetaWarning)
        self.params = params
        self.plan = load_plan(params)
        self.defs = with_cli_logger(build_definitions(params, executor=dg.in_process_executor))
        self.instance = _instance()
        self.verbose = verbose
        self.log_path = new_log_path(self.plan.work, command)
        self._print = out
        self.failures: list[str] = []
        self.gate_failures: list[str] = []
        self.gate_reasons: dict[str, list[str]] = {}
        self.step_seconds: dict[str, float] = {}

    def out(self, line: str) -> None:
        """Print a progress line and keep it in the log file beside the traces."""
        self._print(line)
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"{line}\n")

    def _run(self, job: str, partition_key=None, label: str = "", tags: dict[str, str] | None = None) -> bool:
        from ens_assets.runs.failures import gate_said_no, run_failures
        from ens_assets.runs.run_log import cli_logger_config
        from ens_assets.runs.watchdog import run_tags

        started = time.perf_counter()
        result = execute_against_code_location(
            self.defs.resolve_job_def(job),
            self.instance,
            partition_key=None if partition_key is None else str(partition_key),
            tags={**run_tags(), **(tags or {})},
            # INFO keeps the per-epoch progress lines; traces go to the log file (and the console with --verbose).
            run_config=cli_logger_config(self.log_path, self.verbose),
        )
        elapsed = time.perf_counter() - started
        self.step_seconds[label or job] = elapsed
        failed = run_failures(result, None if partition_key is None else str(partition_key))
        gate_only = (bool(failed) and all(f.is_gate_verdict for f in failed)) or (result.success and gate_said_no(result))
        status = "gate failed" if gate_only else ("ok" if result.success else "FAILED")
        self.out(f"  [{status}] {label or job} ({elapsed:.1f}s)")
        if gate_only:
            self.gate_failures.append(label or job)
            return False
        if not result.success:
            self.failures.append(label or job)
            for failure in failed or []:  # a gate's reasons are printed from its verdict
                if not failure.is_gate_verdict:
                    self.out(f"      {failure.line()}")
            if not failed:
                self.out(f"      run {result.run_id} failed before any step ran")
            raise StageFailed(label or job)
        return True

    def data(self) -> None:
        self.out("data: source images, manifest, detections, folds")
        if self._run("data_job", label="data"):
            for line in _grouping_lines(self.plan):
                self.out(f"      {line}")
        from ens_assets.data.ingest import read_manifest_report

        report = read_manifest_report(self.plan)
        if report.get("small_classes"):
            self.out(f"      classes with fewer images than folds.k = {self.plan.folds.k}: {report['small_classes']} "
                     "(kept; data.min_class_images drops or merges them)")
        for note in report.get("notes", []):
            self.out(f"      note: {note}")
        from ens_assets.runs.quarantine_report import data_stage_report

        for line in data_stage_report(self.plan):
            self.out(line)

    def crops(self) -> None:
        from ens_assets.runs.quarantine_report import crops_stage_report

        self.out(f"crops: thresholds {self.plan.threshold_keys}")
        for key in self.plan.threshold_keys:
            self._run("crops_job", key, f"crops {key}")
            for line in crops_stage_report(self.plan, key):
                self.out(line)

    def train(self) -> None:
        """Checkpoints in checkpoint_order (the nightly schedule's): every smoke run, then the promotions they
        earned, then the k folds of members that passed. Fresh checkpoints are asked for too (the asset skips them)."""
        from ens_assets.checkpoint_order import checkpoint_order, read_checkpoint_state
        from ens_assets.defs.partitions import checkpoint_key
        from ens_assets.plan import SMOKE_FOLD
        from ens_assets.training.checkpoint_store import CheckpointStore

        self.out("train: smoke runs first, then k folds of promoted members that passed smoke")
        for member, fold in checkpoint_order(self.plan, read_checkpoint_state(self.plan, freshness=False)).runs:
            if fold != SMOKE_FOLD:
                continue  # k folds run after every smoke run and the promotions it earned
            self._run("checkpoints_job", checkpoint_key(member, SMOKE_FOLD), f"checkpoint {member} {SMOKE_FOLD}")
            verdict = CheckpointStore(self.plan).verdict(member)
            if verdict is not None and not verdict.passed:
                self.gate_reasons[member] = list(verdict.reasons)
                self.out(f"      smoke gate: {'; '.join(verdict.reasons)}")
        promoted = self._promote_auto_members()
        order = checkpoint_order(self.plan, read_checkpoint_state(self.plan, freshness=False))
        for member, problem in order.blocked.items():
            self.out(f"  [skip] {member} k folds: {problem}")
        for member, fold in order.runs:
            if fold != SMOKE_FOLD:
                self._run("checkpoints_job", checkpoint_key(member, fold), f"checkpoint {member} fold {fold}",
                          tags=promoted.get(member))

    def _promote_auto_members(self) -> dict[str, dict[str, str]]:
        """stage: auto members whose smoke passed go to cv in params.yaml (what the sensor does under the daemon);
        returns the run tags recording each decision."""
        from ens_assets.defs.build import build_definitions
        from ens_assets.plan import load_plan
        from ens_assets.promotion import promote_passed_auto_members

        decisions = promote_passed_auto_members(self.params, by="ens-assets train (CLI)")
        for d in decisions:
            self.out(f"  [promoted] {d['member']} -> cv in {self.params} ({d['reason']})")
        if decisions:
            import dagster as dg

            from ens_assets.runs.run_log import with_cli_logger

            self.plan = load_plan(self.params)
            self.defs = with_cli_logger(build_definitions(self.params, executor=dg.in_process_executor))
        return {d["member"]: {"ens_assets/promoted": d["member"], "ens_assets/promotion_reason": d["reason"][:200],
                              "ens_assets/promoted_by": "ens-assets train (CLI)"} for d in decisions}

    def predict(self) -> None:
        from ens_assets.training.checkpoint_store import CheckpointStore

        self.out("predict: OOF and test predictions per member")
        store = CheckpointStore(self.plan)
        for member in self.plan.member_keys:
            if not store.complete(member):
                self.out(f"  [skip] {member}: its checkpoints are not all there")
                continue
            self._run("predictions_job", member, f"predictions {member}")
            if member in self.plan.subset_member_keys:
                self._run("difficulty_job", member, f"difficulty scores {member}")

    def ensemble(self) -> None:
        from ens_assets.member_outputs import collect_member_outputs

        self.out(f"ensemble: {self.plan.ensemble.method} combiner, honest scores, diagnostics")
        if not collect_member_outputs(self.plan).oof and self.gate_reasons:
            # Gate verdicts are not failures, until they leave nothing to combine: say so in one line.
            gates = "; ".join(f"{m} ({', '.join(r)})" for m, r in self.gate_reasons.items())
            self.out(f"  [FAILED] ensemble: no member is left; smoke gates failed: {gates}")
            self.failures.append("ensemble")
            raise StageFailed("ensemble")
        if self._run("ensemble_job", label="ensemble"):
            self.out(f"      {_test_split_line(self.plan)}")

    def report(self, date: str | None = None) -> str | None:
        """Materialize the morning report of `date` (default: today in the plan's timezone); its date, None
        when the run failed (morning_report.read_report reads it)."""
        date = date or report_date(self.plan)
        self.out(f"report: the morning report of {date}")
        if not self._run("report_job", date, f"morning report {date}"):
            return None
        return date

    def run(self, stages) -> int:
        from ens_assets.runs.watchdog import RunWatchdog

        try:
            # While these runs wait on the gpu pool, a killed holder's slot is freed within seconds.
            with RunWatchdog(self.out):
                for stage in stages:
                    getattr(self, stage)()
        except StageFailed as failed:
            later = list(stages)[list(stages).index(stage) + 1 :]
            self.out(f"stopped at {failed}: nothing downstream of it ran" + (f" ({', '.join(later)} skipped)" if later else ""))
            self.out(f"full log with traces: {self.log_path}" + ("" if self.verbose else " (or rerun with --verbose)"))
            return 1
        return 0


def _grouping_lines(plan) -> list[str]:
    """How the folds were grouped (folds.json): the grouping, its group count, and a warning on a fallback."""
    from ens_assets.data.folds import read_grouping

    grouping = read_grouping(plan)
    if not grouping:
        return []
    lines = [f"folds grouped by {grouping['group_by']}: {grouping['n_groups']} groups ({grouping['reason']})"]
    if grouping.get("warning"):
        lines.append(f"warning: {grouping['warning']}")
    return lines


def _test_split_line(plan) -> str:
    """What the ensemble's spec says about the test split: its size, or that there is none."""
    from ens_assets.ensemble.build import NO_TEST_SPLIT, read_spec

    spec = read_spec(plan.ensemble_dir) or {}
    n, labelled = spec.get("test_images", 0), spec.get("test_labelled_images", 0)
    if not n:
        return NO_TEST_SPLIT
    return f"test split: {n} images (submission.csv)" + (f"; {labelled} labelled, scored in scores.csv (test_*)" if labelled else "")


def report_date(plan) -> str:
    import datetime
    import zoneinfo

    return datetime.datetime.now(zoneinfo.ZoneInfo(plan.schedules.timezone)).date().isoformat()


def _print_short_report(plan, out=print) -> None:
    from ens_assets.morning_report import read_short_report

    short = read_short_report(plan, report_date(plan))
    if short is not None:
        out("\n=== morning report (short; full: ens-assets report, or the morning_report asset in the UI) ===")
        out(short)


def _params_diff(params: Path, old: str, new: str) -> str:
    import difflib

    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), fromfile=f"{params} (before)",
                                        tofile=f"{params} (after)"))


def _edit_command(args) -> int:
    from ens_assets.params_edit import EditError, apply_proposals, promote_member

    try:
        if args.command == "promote":
            from ens_assets.plan import load_plan
            from ens_assets.promotion import record_promotion

            old = args.params.read_text()
            promote_member(args.params, args.member)
            record_promotion(load_plan(args.params), args.member, "promoted by hand", by="ens-assets promote")
            print(_params_diff(args.params, old, args.params.read_text()) or f"{args.member} is already at stage cv")
            return 0
        from ens_assets.morning_report import latest_proposals
        from ens_assets.plan import load_plan

        date, proposals = latest_proposals(load_plan(args.params))
        if not proposals:
            print(f"the morning report of {date} has no proposals")
            return 0
        print(f"proposals of the morning report of {date}:")
        for i, p in enumerate(proposals, 1):
            print(f"  {i}. {p['text']}")
        old = args.params.read_text()
        print(_params_diff(args.params, old, apply_proposals(args.params, proposals, write=args.yes)))
        if args.yes:
            print(f"applied to {args.params} (validated as a plan; comments and order kept)")
        if not args.yes:
            print("dry run: nothing written; add --yes to apply")
        return 0
    except (EditError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _print_where_to_look(plan, out=print, log_path: Path | None = None) -> None:
    import polars as pl

    from ens_assets.ensemble.build import read_roadmap, read_scores

    table = read_scores(plan.ensemble_dir)
    out("\n=== ensemble vs members (honest, nested-by-fold OOF scores) ===")
    if table is not None:
        ci = [pl.format("[{}, {}]", pl.col(f"{c}_lo").round(3), pl.col(f"{c}_hi").round(3)).alias(f"{c} 95%")
              for c in ("log_loss", "accuracy") if f"{c}_lo" in table.columns]
        extra = [c for c in ("calibrated_log_loss", "better_than_best") if c in table.columns]
        held_out = [c for c in ("test_log_loss", "test_accuracy") if c in table.columns and table[c].null_count() < table.height]
        scores = table.select("name", "kind", "log_loss", *ci[:1], "accuracy", *ci[1:], *extra, *held_out,
                              "in_sample_log_loss", "nested")
        with pl.Config(tbl_rows=40, tbl_cols=12, tbl_width_chars=160, float_precision=4, tbl_hide_dataframe_shape=True):
            out(str(scores))
    roadmap = read_roadmap(plan.diagnostics_dir)
    if roadmap is not None:
        out("\n=== diagnostics roadmap ===")
        out(roadmap)
    for line in _grouping_lines(plan):
        out(line)
    out(_test_split_line(plan))
    out("=== where to look ===")
    # Only what exists: a run that stopped early must not point at files it never wrote.
    for name, path in (("submission:", plan.ensemble_dir / "submission.csv"), ("diagnostics:", plan.diagnostics_dir)):
        if path.exists():
            out(f"  {name:16s} {path}")
    if log_path is not None and Path(log_path).is_file():
        out(f"  {'log of this run:':16s} {log_path}")
    out("  Dagster UI:      make ui          (http://127.0.0.1:3000)")
    out("  MLflow UI:       make mlflow-ui   (http://127.0.0.1:5000)")


def _check_data(plan, out=print) -> int:
    """The data half of `check`: files, images, classes, groups, test split, detections (nothing trained)."""
    from ens_assets.data.data_check import check_data

    started = time.perf_counter()
    report = check_data(plan)
    out(f"data ({plan.data.layout} at {plan.data_root}):")
    for line in report.lines():
        out(line)
    out(f"data {'OK' if report.ok else 'has problems'} ({time.perf_counter() - started:.1f}s)")
    return 0 if report.ok else 1


def _init(folder: Path, out_path: Path, force: bool, out=print) -> int:
    """`init DIR`: what the folder holds, the params file written for it, then `check` on that file."""
    from ens_assets.data.ingest import ManifestError
    from ens_assets.plan import PlanError, load_plan
    from ens_assets.project_init import InitError, inspect_folder, write_params

    try:
        facts = inspect_folder(folder)
        path = write_params(facts, out_path, force=force)
        plan = load_plan(path)
    except (InitError, ManifestError, PlanError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out(f"{facts.root}: layout {facts.layout}, {facts.n_images} images, {len(facts.classes)} classes, "
        f"{facts.n_sites or 'no'} sites, groups by {facts.group_by}"
        + (f", detections {facts.detections} (thresholds {facts.thresholds})" if facts.detections else ", no detections"))
    out(f"wrote {path} ({len(plan.members)} members, {plan.folds.k} folds); checking it:")
    return _check_data(plan, out)


def _predict_command(args) -> int:
    from ens_assets.data.detections import DetectionsError
    from ens_assets.inference.artefact import ArtefactError
    from ens_assets.inference.batch import predict_batch
    from ens_assets.inference.inputs import InputError
    from ens_assets.plan import PlanError, load_plan

    try:
        needs_plan = args.ensemble == "latest" or args.ensemble.startswith("models:/") or args.out is None
        plan = load_plan(args.params) if needs_plan or args.params.is_file() else None
        out = args.out or plan.work / "predictions" / (args.images.stem or "images")
        outputs = predict_batch(args.images, out, detections=args.detections, ensemble=args.ensemble, plan=plan,
                                workers=args.workers, progress=True)
    except (PlanError, ArtefactError, InputError, DetectionsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = outputs.summary
    print(f"{summary['predicted']} of {summary['images']} photos classified ({summary['fallbacks']} on a full-frame "
          f"fallback, {len(summary['quarantined'])} unreadable) at {summary['images_per_second']:.1f} images/s "
          f"by ensemble {summary['ensemble']['version']} ({summary['ensemble']['method']})")
    for note in summary["notes"]:
        print(f"note: {note}")
    for row in summary["quarantined"]:
        print(f"unreadable: {row['image']}: {row['reason']}")
    for name, path in outputs.paths.items():
        print(f"{name}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ens-assets", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="the plan (default: params.yaml)")
    # --params is accepted after the command too (`ens-assets demo --params p.yaml`); SUPPRESS keeps the
    # subcommand from resetting a value given before it.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--params", type=Path, default=argparse.SUPPRESS, help="the plan (default: params.yaml)")
    parser.add_argument("--verbose", action="store_true", help="print Dagster's engine events and full traces")
    after.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="print full traces")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", parents=[after], help="validate params.yaml, list its partitions and look at the data (files, images, classes, groups, test split, detections)")
    sub.add_parser("instance", parents=[after], help="prepare the Dagster instance in $DAGSTER_HOME (gpu pool limit of one)")
    materialize = sub.add_parser("materialize", parents=[after], help="run one stage's assets through Dagster")
    materialize.add_argument("stage", choices=[*STAGES, "all"])
    sub.add_parser("demo", parents=[after], help="run every stage on the plan, then print where to look")
    report = sub.add_parser("report", parents=[after], help="make and print the morning report (Dagster asset morning_report)")
    report.add_argument("--date", default=None, help="report partition YYYY-MM-DD (default: today in schedules.timezone)")
    promote = sub.add_parser("promote", parents=[after], help="set stage: cv for MEMBER in params.yaml (comments kept)")
    promote.add_argument("member")
    apply = sub.add_parser("apply-proposals", parents=[after], help="apply the latest morning report's proposals to params.yaml")
    apply.add_argument("--yes", action="store_true", help="write params.yaml (default: show the diff only)")
    init = sub.add_parser("init", help="inspect a folder of your images, write a params.yaml for it, then check it")
    init.add_argument("folder", type=Path, help="the folder holding your images (and labels / MegaDetector JSON)")
    init.add_argument("--out", type=Path, default=Path("params.yaml"), help="params file to write (default: params.yaml)")
    init.add_argument("--force", action="store_true", help="overwrite --out when it exists")
    predict = sub.add_parser("predict", parents=[after], help="classify new photos: predictions.csv + MegaDetector JSON")
    predict.add_argument("images", type=Path, help="a folder of photos (searched recursively) or a CSV with a 'path' column")
    predict.add_argument("--detections", type=Path, default=None, help="MegaDetector batch JSON of the photos "
                         "(default: none, every member classifies the full frame)")
    predict.add_argument("--ensemble", default="latest", help="latest (the plan's), an artefact folder, or models:/NAME/VERSION")
    predict.add_argument("--out", type=Path, default=None, help="output folder (default: <workdir>/predictions/<folder name>)")
    predict.add_argument("--workers", type=int, default=None, help="decoding worker processes (default: cores, at most 8)")
    args = parser.parse_args(argv)
    if args.command == "init":
        return _init(args.folder, args.out, args.force)
    if args.command == "predict":
        return _predict_command(args)

    from ens_assets.plan import PlanError, load_plan

    try:
        plan = load_plan(args.params)
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(f"plan OK: {len(plan.members)} members, thresholds {plan.threshold_keys}, {plan.folds.k} folds")
        for member in plan.members:
            print(f"  {member.key:40s} stage {member.stage:5s} partitions {plan.checkpoint_folds(member)}")
        return _check_data(plan)
    if args.command == "instance":
        instance = _instance()
        print(f"instance {os.environ['DAGSTER_HOME']}: pool limits {instance.event_log_storage.get_concurrency_keys()}")
        return 0
    if args.command in ("promote", "apply-proposals"):
        return _edit_command(args)
    if args.command == "report":
        from ens_assets.morning_report import read_report

        runner = StageRunner(args.params, verbose=args.verbose, command="report")
        date = runner.report(args.date)
        markdown = None if date is None else read_report(runner.plan, date)
        if markdown is None:
            print("error: the morning report failed (see above)", file=sys.stderr)
            return 1
        print(markdown)
        return 0
    stages = STAGES if args.command == "demo" or args.stage == "all" else (args.stage,)
    stages = (*stages, "report") if args.command == "demo" else stages
    runner = StageRunner(args.params, verbose=args.verbose, command=args.command if args.command == "demo" else f"materialize-{args.stage}")
    started = time.perf_counter()
    code = runner.run(stages)
    print(f"\n{'finished' if code == 0 else 'failed'} in {time.perf_counter() - started:.0f}s")
    if args.command == "demo" and code == 0:
        _print_where_to_look(plan, log_path=runner.log_path)
        _print_short_report(plan)
    return code


if __name__ == "__main__":
    sys.exit(main())
