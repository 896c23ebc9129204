"""The summary of a `benchmarks/gpu_check.sh` run, read from the files it recorded; and the one writer of its records.

    python benchmarks/gpu_summary.py OUT        # OUT: the folder gpu_check.sh wrote (figures.jsonl, gpu-tier.xml)

figures.jsonl holds one JSON object a line: a step's outcome, written by gpu_check.sh ({"step", "limit_s",
"seconds", "exit"}), or a measurement, written through `append_record` ({"part": "preflight" | "throughput" |
"trials_per_hour" | "compile_payback" | "retrain_epoch" | "data_path", ...}). gpu-tier.xml is pytest's JUnit report of the GPU
tier. Each goal is a ratio against a baseline measured in the same run: the engine at least 1.5x timm eager; four
trials per GPU at least 2.5x the trials per hour of one; and whether compiling pays back within a search trial.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIGURES_FILE = "figures.jsonl"
TIER_FILE = "gpu-tier.xml"
TIER_LOG = "logs/tier.log"
# A test's outcome as `pytest -v` prints it when the test ends: what the log keeps of a tier cut off at its limit.
VERBOSE_OUTCOME = re.compile(r"^\S+::(\S+) (PASSED|FAILED|ERROR|SKIPPED)\b", re.MULTILINE)
ENGINE_GOAL = 1.5
SHARING_GOAL = 2.5
# `timeout` exits 124 when it stopped the step, 137 when it had to kill it.
TIMED_OUT = (124, 137)

Record = dict[str, Any]


def append_record(path: Path, record: Record) -> None:
    """One measurement as a line of figures.jsonl: written as soon as it is taken, so a step cut off by its time
    limit keeps what it had measured."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as stream:
        stream.write(json.dumps(record) + "\n")


def read_records(path: Path) -> list[Record]:
    """Every line of figures.jsonl (none when the file is missing)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class Tier:
    """The GPU tier's outcome: counts of its tests and the names of those that failed or raised."""

    passed: int
    failed: list[str]
    skipped: int


def read_tier(path: Path) -> Tier | None:
    """pytest's JUnit report, test by test (None when the tier left none)."""
    if not path.is_file():
        return None
    cases = ElementTree.parse(path).getroot().iter("testcase")
    passed, failed, skipped = 0, [], 0
    for case in cases:
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(case.get("name", "?"))
        elif case.find("skipped") is not None:
            skipped += 1
        else:
            passed += 1
    return Tier(passed, failed, skipped)


def tier_from_log(path: Path) -> Tier | None:
    """The outcomes `pytest -v` printed before the tier stopped (None without a log)."""
    if not path.is_file():
        return None
    outcomes = VERBOSE_OUTCOME.findall(path.read_text(errors="replace"))
    return Tier(sum(outcome == "PASSED" for _, outcome in outcomes),
                [name for name, outcome in outcomes if outcome in ("FAILED", "ERROR")],
                sum(outcome == "SKIPPED" for _, outcome in outcomes))


def step_outcomes(records: list[Record]) -> dict[str, Record]:
    """The step lines of gpu_check.sh, by step name."""
    return {record["step"]: record for record in records if "step" in record}


def step_note(step: Record | None) -> str:
    """Why a part has no figures: its step (each part has one of its name) timed out, failed, or never ran."""
    if step is None:
        return "its step did not run"
    if step["exit"] in TIMED_OUT:
        return f"step {step['step']} timed out at its {step['limit_s']} s limit"
    return f"step {step['step']} exited {step['exit']} (see logs/{step['step']}.log)"


def verdict(ratio: float, goal: float) -> str:
    """The goal beside the ratio, and whether the ratio meets it."""
    return f"goal >= {goal:g}x: {'met' if ratio >= goal else 'NOT met'}"


def parts(records: list[Record], name: str) -> list[Record]:
    """The measurements of one part, in the order they were taken."""
    return [record for record in records if record.get("part") == name]


def throughput_lines(records: list[Record], steps: dict[str, Record]) -> list[str]:
    """The engine (eager, then compiled) against timm eager, each timed in alternating rounds of one process."""
    lines = []
    for record in parts(records, "throughput"):
        ratio = record["engine_img_s"] / record["timm_eager_img_s"]
        lines.append(f"engine {record['mode']} vs timm eager, {record['img_size']} px, batch {record['batch_size']}: "
                     f"{record['engine_img_s']:,.0f} vs {record['timm_eager_img_s']:,.0f} img/s = {ratio:.2f}x, "
                     f"{verdict(ratio, ENGINE_GOAL)}")
    if not lines:
        lines.append(f"engine vs timm eager: not measured ({step_note(steps.get('throughput'))})")
    return lines


def sharing_line(records: list[Record], steps: dict[str, Record]) -> str:
    """Trials per hour with four trials per GPU against one per GPU, the same trials drawn in both searches."""
    by_share = {record["per_gpu"]: record for record in parts(records, "trials_per_hour")}
    if 1 not in by_share or 4 not in by_share:
        return f"trials per hour, 4 vs 1 per GPU: not measured ({step_note(steps.get('trials_per_hour'))})"
    one, four = by_share[1], by_share[4]
    ratio = four["trials_per_hour"] / one["trials_per_hour"]
    return (f"trials per hour on {one['dataset']} {one['img_size']} px ({one['complete']} trials of {one['epochs']} "
            f"epochs): 1 per GPU {one['trials_per_hour']:,.0f}/h, 4 per GPU {four['trials_per_hour']:,.0f}/h "
            f"(at most {four['most_at_once']} at once) = {ratio:.2f}x, {verdict(ratio, SHARING_GOAL)}")


def payback_epochs(eager: list[float], compiled: list[float]) -> tuple[float, float, float | None]:
    """(seconds compiling adds to epoch 1, seconds it saves in each later epoch, epochs after which the compiled run
    has caught up: 1 + added / saved; None when it saves nothing). Epoch seconds as metrics.csv records them."""
    added = compiled[0] - eager[0]
    saved = statistics.median(eager[1:]) - statistics.median(compiled[1:])
    return added, saved, (1 + added / saved if saved > 0 else None)


def compile_line(records: list[Record], steps: dict[str, Record]) -> str:
    """Whether `--compile` pays back within a search trial: the seconds compiling adds to the first epoch against
    the seconds it saves in each later one, times the trial's epochs."""
    by_mode = {record["mode"]: record for record in parts(records, "compile_payback")}
    eager, compiled = by_mode.get("eager"), by_mode.get("compiled")
    if eager is None or compiled is None:
        return f"compile payback: not measured ({step_note(steps.get('compile_payback'))})"
    trial = eager["trial_epochs"]
    where = f"compile payback ({eager['arch']}, {eager['dataset']} {eager['img_size']} px, nas train)"
    if len(compiled["epoch_s"]) >= 2:
        added, saved, epochs = payback_epochs(eager["epoch_s"], compiled["epoch_s"])
        if epochs is None:
            return f"{where}: compiling adds {added:.1f} s to epoch 1 and saves nothing after it: never pays back"
        pays = "pays back" if epochs <= trial else "does NOT pay back"
        return (f"{where}: compiling adds {added:.1f} s to epoch 1 and saves {saved:.2f} s in each later epoch: "
                f"pays back after {epochs:.1f} epochs; a search trial is {trial} epochs: {pays}")
    # Stopped at its time limit before epoch 2: no epoch can save more than a whole eager one, which bounds the
    # payback from below.
    eager_epoch = statistics.median(eager["epoch_s"][1:])
    if compiled["epoch_s"]:
        added = compiled["epoch_s"][0] - eager["epoch_s"][0]
        cost = f"adds {added:.1f} s to epoch 1 (stopped at its {compiled['timed_out_s']:.0f} s limit in epoch 2)"
    else:
        added = compiled["timed_out_s"] - eager["epoch_s"][0]
        cost = f"adds over {added:.0f} s (epoch 1 unfinished at its {compiled['timed_out_s']:.0f} s limit)"
    at_least = 1 + added / eager_epoch
    pays = "does NOT pay back" if at_least > trial else "undecided"
    return (f"{where}: compiling {cost}; a later epoch saves at most its {eager_epoch:.2f} s, so it pays back after "
            f"more than {at_least:.0f} epochs; a search trial is {trial} epochs: {pays}")


def compile_at_throughput_line(records: list[Record]) -> str | None:
    """At the throughput benchmark's size: compiling's extra warm-up seconds against its saving per image."""
    by_mode = {record["mode"]: record for record in parts(records, "throughput")}
    if "eager" not in by_mode or "compiled" not in by_mode:
        return None
    eager, compiled = by_mode["eager"], by_mode["compiled"]
    added = compiled["engine_warmup_s"] - eager["engine_warmup_s"]
    saved = 1 / eager["engine_img_s"] - 1 / compiled["engine_img_s"]
    where = f"compile payback ({eager['img_size']} px, batch {eager['batch_size']}, train_throughput)"
    if saved <= 0:
        return f"{where}: compiling adds {added:.1f} s of warm-up and trains no faster: never pays back"
    return (f"{where}: compiling adds {added:.1f} s of warm-up and saves {saved * 1e3:.3f} ms an image: pays "
            f"back after {added / saved:,.0f} images")


def retrain_line(records: list[Record], steps: dict[str, Record]) -> str:
    """Training images/s of each epoch of the retrain recipe at 224 px (no goal: the figure RESULTS.md lacks)."""
    found = parts(records, "retrain_epoch")
    if not found:
        return f"retrain epoch: not measured ({step_note(steps.get('retrain_epoch'))})"
    record = found[-1]
    rates = ", ".join(f"epoch {index} {rate:,.0f}" for index, rate in enumerate(record["images_per_s"], 1))
    return (f"retrain epoch at {record['img_size']} px ({record['arch_id']}, {record['recipe']} recipe, batch "
            f"{record['batch_size']}, nas train): {rates} img/s")


def data_path_line(records: list[Record], steps: dict[str, Record]) -> str:
    """Training batches delivered to the GPU by the file path and by the image cache, beside the model's step: which
    side waits (no goal: the figure RESULTS.md lacks)."""
    found = parts(records, "data_path")
    if not found:
        return f"data path: not measured ({step_note(steps.get('data_path'))})"
    record = found[-1]
    files, streamed, step = record["files_to_gpu_all_cores"], record["cache_to_gpu_streamed"], record["step_gpu"]
    return (f"data path at {record['size']} px ({record['images']:,} JPEGs of 500 x 375, {record['cores']} cores): "
            f"files {files:,.0f} img/s on every core, image cache {streamed:,.0f} img/s a batch at a time "
            f"({streamed / files:.1f}x), {record['cache_to_gpu_resident']:,.0f} img/s held on the GPU; a 3M XCiT "
            f"trains at {step:,.0f} img/s there, so the files feed it {min(files / step, 1):.0%} of its pace and the "
            f"cache {min(streamed / step, 1):.0%}; the cache built at {record['build_all_cores_img_s']:,.0f} img/s")


def preflight_line(records: list[Record], steps: dict[str, Record]) -> str:
    """The software the check ran on, and the modules it lacked (the GPU image's are carried in .whl/)."""
    found = parts(records, "preflight")
    if not found:
        return f"preflight: not run ({step_note(steps.get('preflight'))})"
    record = found[-1]
    missing = ", ".join(record["missing"]) or "none"
    return (f"preflight: torch {record['torch']}, CUDA {record['cuda']}, {record.get('device', 'no CUDA device')}; "
            f"missing modules: {missing}")


def tier_counts(tier: Tier) -> str:
    """Passed, failed (by name) and skipped tests."""
    failed = f", failed: {', '.join(tier.failed)}" if tier.failed else ""
    return f"{tier.passed} passed, {len(tier.failed)} failed, {tier.skipped} skipped{failed}"


def tier_line(folder: Path, steps: dict[str, Record]) -> str:
    """The GPU tier's counts, naming each test that failed; from its log when it stopped before its report."""
    tier = read_tier(folder / TIER_FILE)
    if tier is not None:
        return f"GPU tier (pytest -m gpu): {tier_counts(tier)}"
    partial = tier_from_log(folder / TIER_LOG)
    if partial is None:
        return f"GPU tier: no report ({step_note(steps.get('tier'))})"
    return f"GPU tier: no report ({step_note(steps.get('tier'))}); its log shows {tier_counts(partial)}"


def steps_line(steps: dict[str, Record]) -> str:
    """Each step's seconds against its limit, and how it ended."""
    shown = []
    for name, step in steps.items():
        status = ("timed out" if step["exit"] in TIMED_OUT else "ok" if step["exit"] == 0 else f"exit {step['exit']}")
        shown.append(f"{name} {step['seconds']} s of {step['limit_s']} ({status})")
    return "steps: " + ("; ".join(shown) if shown else "none recorded")


def summary(folder: Path) -> str:
    """The summary of the gpu_check.sh run recorded in `folder`, a line per figure, each goal with its verdict."""
    records = read_records(folder / FIGURES_FILE)
    steps = step_outcomes(records)
    devices = sorted({record["device"] for record in records if "device" in record})
    lines = [f"GPU check of {folder} on {', '.join(devices) or 'no recorded device'}", steps_line(steps),
             preflight_line(records, steps), tier_line(folder, steps),
             *throughput_lines(records, steps),
             sharing_line(records, steps), compile_line(records, steps)]
    at_throughput = compile_at_throughput_line(records)
    if at_throughput is not None:
        lines.append(at_throughput)
    lines.append(retrain_line(records, steps))
    lines.append(data_path_line(records, steps))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the folder gpu_check.sh wrote ($OUT)")
    args = parser.parse_args()
    if not args.folder.is_dir():
        parser.error(f"{args.folder}: no such folder; expected the one gpu_check.sh wrote")
    print(summary(args.folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
