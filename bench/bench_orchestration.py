"""Orchestration overhead: materializing a small demo plan through Dagster (the CLI's StageRunner, in-process
executor, a real SQLite instance in a tmp DAGSTER_HOME) vs the compute measured inside the steps.

Run: .venv/bin/python -m bench.bench_orchestration [--images-per-class 10 --epochs 2]
Prints, all from this one run:
- wall time of every stage's runs (StageRunner.run) and of building the definitions + instance;
- the sum of step durations (STEP_START -> STEP_SUCCESS/FAILURE in the event log): the compute baseline;
- training time recorded in the checkpoint sidecars (the part a GPU would speed up);
- overhead = (wall - step compute) / wall (goal <= 5%), and the per-run cost of Dagster.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


def demo_plan(images_per_class: int, epochs: int) -> dict:
    """A demo-like plan: two cv members on two thresholds, 2 folds; gates off so every fold really trains."""
    return {
        "data": {
            "layout": "demo",
            "root": "data/demo",
            "detections": "data/demo/megadetector.json",
            "demo": {"seed": 0, "train_images_per_class": images_per_class, "test_images_per_class": 3, "train_sites": 6, "test_sites": 2,
                     "frame_width": 96, "frame_height": 72},
        },
        "crops": {"thresholds": [0.05, 0.2], "mode": "top", "square": True, "padding": 0.1, "min_size_px": 4, "image_size": 32},
        "folds": {"k": 2, "seed": 0},
        "recipes": {"geo": {"hflip": 0.5, "scale": [0.6, 1.0], "label_smoothing": 0.1}},
        "training": {
            "batch_size": 16,
            "warmup_epochs": 0,
            "smoke": {"epochs": epochs, "time_budget_s": 300, "patience": 5},
            "cv": {"epochs": epochs, "time_budget_s": 300, "patience": 5},
        },
        "members": [
            {"backbone": "test_resnet", "threshold": 0.05, "recipe": "geo", "stage": "cv"},
            {"backbone": "test_resnet", "threshold": 0.2, "recipe": "geo", "stage": "cv"},
        ],
        # Overhead is what is measured here, not model quality: let every member through to its k folds.
        "promotion": {"min_accuracy_over_chance": 0.0, "require_every_class_predicted": False, "require_loss_decrease": False},
        "workdir": "work",
    }


def step_seconds(instance) -> tuple[float, int, int]:
    """Sum of step durations over every run on the instance, the number of steps, and of runs."""
    import dagster as dg

    total, steps = 0.0, 0
    runs = instance.get_runs()
    for run in runs:
        started: dict[str, float] = {}
        for record in instance.all_logs(run.run_id):
            event = record.dagster_event
            if event is None or record.step_key is None:
                continue
            if event.event_type == dg.DagsterEventType.STEP_START:
                started[record.step_key] = record.timestamp
            elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE) and record.step_key in started:
                total += record.timestamp - started.pop(record.step_key)
                steps += 1
    return total, steps, len(runs)


def sidecar_train_seconds(work: Path) -> float:
    total = 0.0
    for sidecar in work.glob("checkpoints/*/*/checkpoint.json"):
        data = json.loads(sidecar.read_text())
        total += float(data.get("result", data).get("train_seconds", 0.0) or _find(data, "train_seconds"))
    return total


def _find(obj, key: str) -> float:
    if isinstance(obj, dict):
        if key in obj and isinstance(obj[key], (int, float)):
            return float(obj[key])
        return next((v for v in (_find(x, key) for x in obj.values()) if v), 0.0)
    return 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--plan", choices=("demo", "tiny"), default="demo",
        help="demo: the repo's params.yaml (the plan `make demo` runs, ~5 min); tiny: a seconds-long plan where "
        "fixed per-run costs dominate",
    )
    parser.add_argument("--images-per-class", type=int, default=10, help="tiny plan only")
    parser.add_argument("--epochs", type=int, default=2, help="tiny plan only")
    args = parser.parse_args(argv)

    project = Path(tempfile.mkdtemp(prefix="bench_orchestration_"))
    try:
        home = project / "dagster_home"
        home.mkdir()
        shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
        os.environ["DAGSTER_HOME"] = str(home)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlruns.db'}"
        params = project / "params.yaml"
        if args.plan == "demo":  # its relative paths (data/demo, data/work) now resolve inside the tmp project
            shutil.copy(REPO_ROOT / "params.yaml", params)
        else:
            params.write_text(yaml.safe_dump(demo_plan(args.images_per_class, args.epochs), sort_keys=False))

        from ens_assets.cli import STAGES, StageRunner

        lines: list[str] = []
        started = time.perf_counter()
        runner = StageRunner(params, out=lines.append)
        setup_s = time.perf_counter() - started
        started = time.perf_counter()
        code = runner.run(STAGES)
        wall_s = time.perf_counter() - started
        compute_s, n_steps, n_runs = step_seconds(runner.instance)
        train_s = sidecar_train_seconds(runner.plan.work)

        print("\n".join(lines))
        overhead = (wall_s - compute_s) / wall_s
        plan_text = "repo params.yaml (the demo plan)" if args.plan == "demo" else (
            f"tiny: {args.images_per_class} train images/class, {args.epochs} epochs, 2 members x (smoke + 2 folds)")
        print(f"\nplan: {plan_text}; exit code {code}")
        print(f"definitions + instance setup:        {setup_s:7.2f} s (once per process)")
        print(f"wall, all stages (StageRunner.run):  {wall_s:7.2f} s over {n_runs} runs, {n_steps} steps")
        print(f"sum of step durations (baseline):    {compute_s:7.2f} s")
        print(f"  of which training (sidecars):      {train_s:7.2f} s")
        print(f"orchestration overhead:              {wall_s - compute_s:7.2f} s = {overhead:.1%} of wall (goal <= 5%)")
        print(f"per run:                             {(wall_s - compute_s) / max(n_runs, 1):7.2f} s")
        print(f"wall / step compute:                 {wall_s / max(compute_s, 1e-9):7.3f}x")
    finally:
        shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
