"""`nas train`: train one architecture (preset or arch.json) on a dataset, checkpoint it, test it once.

Exit codes: 0 trained, 1 training diverged (NaN/inf loss; the last good checkpoint is kept), 2 bad input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_OUT_ROOT = Path("results") / "train"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("arch", metavar="PRESET|arch.json", help="a preset name or an architecture JSON file")
    parser.add_argument("--dataset", default="digits", help="dataset name (default digits)")
    parser.add_argument("--epochs", type=int, default=None, metavar="N", help="epochs (default: the recipe's)")
    parser.add_argument("--recipe", default="proxy", help="proxy (default), xcit or transfer")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="checkpoint folder (default results/train/<arch_id>-<dataset>)")
    parser.add_argument("--resume", action="store_true", help="continue the run whose checkpoints are in --out")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of initialisation, data order and augmentation (default 0)")
    parser.add_argument("--patch-size", type=int, default=None, metavar="P",
                        help="patch size (default: the architecture's, or the dataset's when that does not fit)")
    parser.add_argument("--data-dir", default=None, metavar="DIR", help="folder holding the dataset's files")
    parser.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                        help="share of the training set held out for validation (default 0.2, as nas search)")
    parser.add_argument("--split-seed", type=int, default=0, metavar="S",
                        help="seed of the validation split (default 0; a search's --seed)")
    parser.add_argument("--download", action="store_true", help="download the dataset into --data-dir if missing")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=None, metavar="B", help="global batch (default: recipe's)")
    parser.add_argument("--lr", type=float, default=None, metavar="LR",
                        help="base learning rate at batch 512; the run uses LR x batch / 512 (default: recipe's)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (worth it on CUDA)")


def run(args: argparse.Namespace) -> int:
    import torch

    from search_spaces.build import build_model
    from core.errors import UsageError
    from search_spaces.presets import fit_patch_size, load_arch
    from trainers.checkpoint import load_checkpoint
    from trainers.data import load_dataset
    from trainers.engine import (EpochMetrics, TrainingDiverged, evaluate, fit, init_distributed, seed_everything,
                                 select_device)
    from trainers.recipe import get_recipe

    arch = load_arch(args.arch)
    overrides = {name: value for name, value in (("epochs", args.epochs), ("batch_size", args.batch_size),
                                                 ("lr", args.lr)) if value is not None}
    recipe = get_recipe(args.recipe, **overrides)
    if args.seed < 0:
        raise UsageError(f"--seed {args.seed}: expected a non-negative integer")
    if args.out is not None:
        _refuse_overwrite(Path(args.out), args.resume)
    world = init_distributed(args.device)
    device = select_device(args.device)
    data = load_dataset(args.dataset, args.data_dir, download=args.download, val_fraction=args.val_fraction,
                        seed=args.split_seed)
    info = data.info
    fitted = fit_patch_size(arch, info.img_size, info.patch_size, args.patch_size)
    out = Path(args.out) if args.out is not None else DEFAULT_OUT_ROOT / f"{fitted.arch_id}-{info.name}"
    _refuse_overwrite(out, args.resume)

    def say(line: str) -> None:
        if world.is_main:
            print(line, flush=True)

    if fitted.patch_size != arch.patch_size:
        why = "(--patch-size)" if args.patch_size is not None else "(override with --patch-size)"
        say(f"patch size {arch.patch_size} -> {fitted.patch_size} for {info.name} at {info.img_size} px {why}")
    seed_everything(args.seed)
    model = build_model(fitted, info.num_classes, info.img_size, info.in_chans)
    params = sum(p.numel() for p in model.parameters())
    test_size = "no" if data.test is None else f"{len(data.test.labels):,}"
    say(f"arch    {fitted.arch_id}  {fitted.summary()}  {params:,} params")
    say(f"data    {info.name}: {len(data.train.labels):,} train / {len(data.val.labels):,} val / {test_size} test "
        f"at {info.img_size} px")
    say(f"recipe  {recipe.name}: {recipe.epochs} epochs, batch {recipe.batch_size}, lr {recipe.effective_lr:.3g} "
        f"(= {recipe.lr:g} x {recipe.batch_size}/512), seed {args.seed}, {device}"
        f"{' x ' + str(world.world_size) if world.active else ''}  -> {out}")

    def report(metrics: EpochMetrics) -> None:
        ema = "" if metrics.ema_val_acc is None else f"  ema_acc {metrics.ema_val_acc:6.2%} ({metrics.weights})"
        say(f"epoch {metrics.epoch:>{len(str(recipe.epochs))}}/{recipe.epochs}  train_loss {metrics.train_loss:.4f}  "
            f"val_loss {metrics.val_loss:.4f}  val_acc {metrics.val_acc:6.2%}  top5 {metrics.val_top5:6.2%}"
            f"{ema}  lr {metrics.lr:.2e}  {metrics.seconds:.1f}s  {metrics.images_per_s:,.0f} img/s")

    try:
        result = fit(model, data, recipe, device=device, seed=args.seed, on_epoch=report, checkpoint_dir=out,
                     resume=args.resume, arch=fitted, compile=args.compile, progress=True)
    except TrainingDiverged as error:
        print(f"nas train: error: {error}", file=sys.stderr)
        return 1
    best_epoch = max(result.history, key=lambda m: m.val_acc).epoch if result.history else 0
    say(f"done    best val_acc {result.best_val_acc:.2%} (epoch {best_epoch}), last {result.last_val_acc:.2%}, "
        f"{result.epochs_run} epochs, {result.seconds:.1f}s")
    if data.test is None:
        say(f"test    {info.name} has no test split")
        return 0
    if world.active:
        torch.distributed.barrier()
    best = load_checkpoint(out / "best.json", model)
    scores = evaluate(model, data.test, info, device=device, batch_size=recipe.batch_size)
    say(f"test    acc {scores['acc']:.2%}  top5 {scores['top5']:.2%}  loss {scores['loss']:.4f}  "
        f"({scores['count']:,} images, best checkpoint: epoch {best.epoch}, {best.record['weights']} weights)")
    return 0


def _refuse_overwrite(out: Path, resume: bool) -> None:
    """Never overwrite a run: an --out holding checkpoints needs --resume."""
    from core.errors import UsageError
    from trainers.checkpoint import existing_checkpoints

    existing = existing_checkpoints(out)
    if existing and not resume:
        raise UsageError(f"--out {out} already holds checkpoints ({', '.join(p.name for p in existing)}): "
                         "expected --resume to continue that run, or another --out")
