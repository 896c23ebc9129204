"""The seed paper's ablation reproduced with qkvnas: XCiT-N12 with linear QKV against SNE, P-SNE and F-SNE (Ahn et
al., arXiv 2111.10017), the same recipe for all, on mnist5k, several seeds each; writes docs/paper-ablation.md.

    python benchmarks/paper_ablation.py               # train what is missing (resumable), then write the page
    python benchmarks/paper_ablation.py --report      # only the page, from the committed per-seed results

Each (model, seed) is one `nas.retrain` call into --out (checkpoints, kept out of git), --workers at once on one
torch thread each (two small models side by side use two cores better than one model on both); its row joins
docs/paper-ablation/retrain.csv and its validation curve docs/paper-ablation/curves.csv as soon as it finishes,
so a killed run, or a later session on a fresh clone, resumes with the same command: the units those files hold
are not trained again. Seeds run outer and models inner, so a partial run compares the models on the same seeds.
Equivalent to one `nas retrain` (printed on the page), which keeps its units in one folder instead.
"""
from __future__ import annotations

import argparse
import io
import math
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import pandas as pd
from scipy import stats

from qkvnas_core.files import write_text_atomic
from nas.runs.results import RunFolder

PAGE = Path("docs/paper-ablation.md")
DATA = Path("docs/paper-ablation")
DEFAULT_OUT = Path("benchmarks/runs/paper-ablation")
BASELINE = "xcit-n12"
MODELS = ("xcit-n12-sne", "xcit-n12-psne", "xcit-n12-fsne")
CURVE_COLUMNS = ["arch_id", "source", "seed", "epoch", "val_acc"]
# The page's sizing, measured on the two cores it ran on (see the page); change them and the page says so.
DEFAULT_EPOCHS = 15
DEFAULT_SEEDS = 5


def command_line(epochs: int, seeds: int) -> str:
    models = " ".join(f"--arch {name}" for name in MODELS)
    return (f"mkdir -p {DEFAULT_OUT} && nas retrain {DEFAULT_OUT} --dataset mnist5k --baseline {BASELINE} {models} "
            f"--seeds {seeds} --epochs {epochs} --device cpu")


def read_table(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=columns)


def write_table(path: Path, frame: pd.DataFrame) -> None:
    text = io.StringIO()
    frame.to_csv(text, index=False)
    write_text_atomic(path, text.getvalue())


def train_unit(source: str, seed: int, epochs: int, out: Path) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """One (model, seed) through nas.retrain on one torch thread: its retrain.csv row and its validation curve."""
    import torch

    import nas
    from nas.winners.retrain import model_folder

    torch.set_num_threads(1)
    start = time.monotonic()
    role = {"baseline": source} if source == BASELINE else {"arch": source}
    outcome = nas.retrain(out, dataset="mnist5k", seeds=[seed], epochs=epochs, device="cpu", resume=True, **role)
    row = outcome.table[outcome.table["seed"] == seed]
    arch_id = row["arch_id"].iloc[0]
    curve = pd.read_csv(model_folder(out, arch_id, seed) / "metrics.csv")[["epoch", "val_acc"]].assign(
        arch_id=arch_id, source=source, seed=seed)[CURVE_COLUMNS]
    return row, curve, time.monotonic() - start


def train_missing(epochs: int, seeds: int, out: Path, workers: int) -> None:
    """Train every (model, seed) the committed files lack, seed by seed, `workers` at once on a thread each,
    adding each to the files as it finishes."""
    from trainers.from_scratch import RETRAIN_COLUMNS

    out.mkdir(parents=True, exist_ok=True)
    DATA.mkdir(parents=True, exist_ok=True)
    table = read_table(RunFolder(DATA).retrain_file, RETRAIN_COLUMNS)
    done = set(zip(table["source"], table["seed"]))
    todo = [(source, seed) for seed in range(seeds) for source in (BASELINE, *MODELS) if (source, seed) not in done]
    print(f"{len(todo)} (model, seed) units to train, {len(done)} done -> {DATA}", flush=True)
    with ProcessPoolExecutor(workers) as pool:
        futures = {pool.submit(train_unit, source, seed, epochs, out): (source, seed) for source, seed in todo}
        for future in as_completed(futures):
            source, seed = futures[future]
            row, curve, seconds = future.result()
            table = pd.concat([read_table(RunFolder(DATA).retrain_file, RETRAIN_COLUMNS), row], ignore_index=True)
            curves = pd.concat([read_table(DATA / "curves.csv", CURVE_COLUMNS), curve], ignore_index=True)
            write_table(DATA / "curves.csv", curves.sort_values(["source", "seed", "epoch"]))
            write_table(RunFolder(DATA).retrain_file, table.sort_values(["role", "source", "seed"]))
            print(f"{source} seed {seed}: top1 {row['top1'].iloc[0]:.2%} ({seconds:.0f} s)", flush=True)


def rank_settling(curves: pd.DataFrame) -> pd.DataFrame:
    """Per epoch: Kendall's tau between the models' mean val_acc at that epoch and their mean best val_acc over the
    whole run (seeds both have), and whether the order at that epoch is the final one."""
    best = curves.groupby(["source", "seed"])["val_acc"].max().groupby("source").mean()
    rows = []
    for epoch, at_epoch in curves.groupby("epoch"):
        means = at_epoch.groupby("source")["val_acc"].mean().reindex(best.index)
        tau = stats.kendalltau(means, best).statistic if means.notna().all() and len(best) > 1 else math.nan
        rows.append({"epoch": int(epoch), "kendall_tau": tau,
                     "same_order": list(means.sort_values().index) == list(best.sort_values().index)})
    return pd.DataFrame(rows)


def measured_time(table: pd.DataFrame, planned: int) -> str:
    """What the finished units took (their `seconds`), and the whole ablation at that pace, two at once."""
    if table.empty:
        return ""
    mean = float(table["seconds"].mean())
    return (f" (measured: {mean / 60:.0f} min a unit over {len(table)} units, so {planned} units take about "
            f"{mean * planned / 2 / 3600:.1f} h)")


def points(value: float) -> str:
    return "" if pd.isna(value) else f"{value * 100:+.2f}"


def percent(value: float) -> str:
    return "" if pd.isna(value) else f"{value * 100:.2f}"


def page(table: pd.DataFrame, curves: pd.DataFrame, epochs: int, seeds: int) -> str:
    from nas.runs.seed_stats import baseline_comparison, seed_summary

    summary = seed_summary(table)
    comparison = baseline_comparison(table)
    comparison = comparison.set_index("source") if len(comparison) else comparison
    done = len(table)
    planned = seeds * (1 + len(MODELS))
    lines = [
        "# The seed paper's ablation, reproduced with qkvnas",
        "",
        "Ahn et al. (arXiv 2111.10017) replace XCiT-N12's linear Q, K, V projections with non-linear embeddings:",
        "separate two-layer ReLU embeddings (SNE), a first layer shared by Q, K and V (P-SNE), and both layers shared",
        "with trainable codes of size 8 (F-SNE); on ImageNet-1k at 224 px they report 71.4% top-1 for F-SNE at 3.1M",
        "parameters against XCiT-N12's 69.9% at 3.05M, a 1.5-point gain from one run each. This page asks the same",
        "question of the presets (`nas presets`: xcit-n12, xcit-n12-sne, -psne, -fsne, codes of size 8) on mnist5k,",
        "with several seeds and intervals, under one recipe for all four.",
        "",
        "Made by (resumable; each unit's row lands in the files beside this page as it finishes):",
        "",
        "```bash",
        f"python benchmarks/paper_ablation.py --epochs {epochs} --seeds {seeds}",
        "```",
        "",
        "which trains, for every seed and model, what this one command trains in one folder:",
        "",
        "```bash",
        command_line(epochs, seeds),
        "```",
        "",
        "Per-seed results: [paper-ablation/retrain.csv](paper-ablation/retrain.csv) (nas retrain's rows), validation",
        f"curves: [paper-ablation/curves.csv](paper-ablation/curves.csv). **{done} of {planned} (model, seed) units"
        f" finished**{'' if done == planned else ' (the rest resume with the command above)'}.",
        "",
        "## Sizing",
        "",
        "mnist5k (4,000 training images of 28 px, 20% held out for validation; its own 1,000-image test split), patch",
        "16 fitted to 4 (a 7 x 7 token grid), the `small` recipe (nas retrain's full recipe for mnist5k) cut to",
        f"{epochs} epochs, seeds 0-{seeds - 1}: the seed changes initialisation, data order and augmentation; the split",
        "is fixed. Sized so the whole ablation takes about three hours on the two CPU cores of the development",
        f"machine, two units at once on a thread each{measured_time(table, planned)}, and long enough that the",
        "ranking settles (below).",
        "",
        "## Results",
        "",
        "Test top-1 in %: mean over seeds, standard deviation, 95% Student-t interval of the mean. Difference: the",
        "model's test top-1 minus linear QKV's, paired by seed, in points, with its 95% t interval; P(improvement):",
        "the chance that a run of the model beats a run of linear QKV (rliable's probability of improvement). Why t",
        "and not the bootstrap: docs/retrain.md.",
        "",
        "| model | structure | params | seeds | top-1 mean | std | 95% interval | difference to linear | 95% interval "
        "| P(improvement) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summary.itertuples():
        compared = comparison.loc[row.source] if row.source in comparison.index else None
        difference = ("(baseline)", "", "") if compared is None else (
            points(compared["difference"]),
            "" if pd.isna(compared["low"]) else f"[{points(compared['low'])}, {points(compared['high'])}]",
            f"{compared['p_improvement']:.2f}")
        interval = "" if pd.isna(row.top1_low) else f"[{percent(row.top1_low)}, {percent(row.top1_high)}]"
        lines.append(f"| {row.source} | {row.structure} | {int(row.params):,} | {row.seeds} | "
                     f"{percent(row.top1_mean)} | {percent(row.top1_std)} | {interval} | "
                     f"{' | '.join(difference)} |")
    settling = rank_settling(curves) if len(curves) else pd.DataFrame()
    lines += ["", "## When the ranking settles", ""]
    if len(settling):
        final = settling["same_order"].to_numpy()
        settled = next((int(settling["epoch"].iloc[i]) for i in range(len(final)) if final[i:].all()), None)
        lines += [
            "Kendall's tau between the four models' mean validation accuracy at each epoch and their mean best",
            "validation accuracy of the whole run (1: the same order):",
            "",
            "| epoch | " + " | ".join(str(epoch) for epoch in settling["epoch"]) + " |",
            "|---|" + "---:|" * len(settling),
            "| tau | " + " | ".join("" if pd.isna(tau) else f"{tau:.2f}" for tau in settling["kendall_tau"]) + " |",
            "",
            (f"The order is final from epoch {settled} of {int(settling['epoch'].max())} on." if settled is not None
             else "The order changes until the last epoch: a longer run could still reorder the models."),
            "On the qkv space the rung table (benchmarks/RESULTS.md) puts Spearman's rho at 0.93 after 6 of 10 "
            "epochs.",
        ]
    lines += ["", "## What it shows, and what it cannot", ""]
    lines += reading(summary, comparison)
    return "\n".join(lines) + "\n"


def reading(summary: pd.DataFrame, comparison: pd.DataFrame) -> list[str]:
    """The page's reading of the differences, from their signs and intervals."""
    lines = []
    for source, row in comparison.iterrows():
        if row["shared"] < 2:
            verdict = "has too few shared seeds for an interval"
        elif row["low"] > 0:
            verdict = "beats linear QKV: the whole interval lies above 0"
        elif row["high"] < 0:
            verdict = "loses to linear QKV: the whole interval lies below 0"
        else:
            verdict = "is not told apart from linear QKV: the interval holds 0"
        seeds = f"{int(row['shared'])} seed{'s' if row['shared'] != 1 else ''}"
        lines.append(f"- {source} {verdict} ({points(row['difference'])} points over {seeds}).")
    lines += [
        "",
        "mnist5k at 28 px is not ImageNet at 224 px: 3,200 training images of hand-written digits, 49 tokens, a short",
        "recipe without the XCiT recipe's heavy augmentation, against 1.28M images, 196 tokens and 400 epochs. What",
        "this tests is the sign and the interval of each difference under equal training on small images; it cannot",
        "confirm or refute the paper's ImageNet figure, and models this size are far from converged here. A",
        "difference whose interval holds 0 is not evidence either way at these seeds: more seeds narrow it.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoints (not committed)")
    parser.add_argument("--workers", type=int, default=2, help="units trained at once, one thread each")
    parser.add_argument("--report", action="store_true", help="only write the page from the committed results")
    args = parser.parse_args()
    if not args.report:
        train_missing(args.epochs, args.seeds, args.out, args.workers)
    table = read_table(RunFolder(DATA).retrain_file)
    curves = read_table(DATA / "curves.csv", CURVE_COLUMNS)
    write_text_atomic(PAGE, page(table, curves, args.epochs, args.seeds))
    print(f"written: {PAGE}")


if __name__ == "__main__":
    main()
