"""The GPU tier, `pytest -m gpu`: each CUDA branch run once on a real GPU against an oracle. Skipped without CUDA
(CI, the development machine); `bash benchmarks/gpu_check.sh` runs it on a lent GPU, within about two minutes."""
from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator

import pytest
import timm
import torch

from qkvnas_core.errors import UsageError
from search_spaces.arch import ArchConfig
from search_spaces.build import build_model
from search_spaces.cost import count_params
from search_spaces.model_tools.device import parse_device
from search_spaces.model_tools.latency import device_name, measure_latency
from search_spaces.model_tools.memory import BYTES_PER_PARAM, TRAINING_COPIES
from search_spaces.shape import DataShape
from test_engine import DIGITS, TINY_FSNE, tiny_model
from test_gpu_check import figures
from test_retrain import read_metrics, write_run
from trainers.batches import LoaderBatches, TensorImageDataset, image_transform, make_batches
from trainers.checkpoint import load_checkpoint
from trainers.engine import StopTraining, fit
from trainers.optim import Training, build_training
from trainers.recipe import get_recipe
from trainers.runtime import seed_everything, select_device

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU: the GPU tier runs on a lent one through `bash benchmarks/gpu_check.sh`")]

CUDA = torch.device("cuda", 0)
# bf16 keeps 8 bits of mantissa (a relative step of 2**-8 = 0.4%); a two-block model's loss and gradients drift
# from float32 by a few of those steps.
BF16_LOSS_TOLERANCE = 0.02
BF16_GRADIENT_TOLERANCE = 0.05


@contextlib.contextmanager
def float32_math() -> Iterator[None]:
    """Plain float32 matmuls and convolutions (no TF32), as on the CPU: the reference side of the bf16 and compile
    checks. `fit` turns TF32 matmuls on for the whole process, so they are switched off here and put back."""
    precision, cudnn_tf32 = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


def one_step(digits, autocast: bool) -> tuple[float, dict[str, torch.Tensor], torch.dtype, torch.nn.Module, Training]:
    """The engine's own step on CUDA from the same weights and batch: (loss, gradients, logits dtype, model, training);
    autocast False runs the very same step in float32."""
    model = tiny_model(TINY_FSNE)
    recipe = get_recipe("proxy", epochs=1)
    batches = make_batches(digits.train, digits.info, recipe, CUDA, batch_size=recipe.batch_size, train=True,
                           channels_last=True)
    training = build_training(model, recipe, digits.info.num_classes, CUDA, steps_per_epoch=len(batches))
    training.step.autocast = autocast
    dtypes = []
    model.head.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    images, labels = next(iter(batches.epoch(1)))
    loss = float(training.step(images, labels))
    gradients = {name: param.grad.float().clone() for name, param in model.named_parameters() if param.grad is not None}
    return loss, gradients, dtypes[0], model, training


def test_bf16_autocast_step_matches_float32_within_bf16_precision(digits):
    loss, gradients, dtype, model, training = one_step(digits, autocast=True)
    with float32_math():
        reference_loss, reference, reference_dtype, _, _ = one_step(digits, autocast=False)
    assert (dtype, reference_dtype) == (torch.bfloat16, torch.float32)
    assert loss == pytest.approx(reference_loss, rel=BF16_LOSS_TOLERANCE)
    assert gradients.keys() == reference.keys()
    difference = math.sqrt(sum(float((gradients[name] - reference[name]).pow(2).sum()) for name in reference))
    size = math.sqrt(sum(float(reference[name].pow(2).sum()) for name in reference))
    assert difference <= BF16_GRADIENT_TOLERANCE * size, difference / size
    # The rest of the CUDA step: channels-last weights and fused AdamW.
    convolutions = [param for param in model.parameters() if param.dim() == 4]
    assert convolutions and all(param.is_contiguous(memory_format=torch.channels_last) for param in convolutions)
    assert all(group["fused"] for group in training.optimizer.param_groups)


def test_fit_on_cuda_n_sets_its_flags_and_learns_as_the_cpu_does(digits):
    """The device by its index (the parser's cuda:N), cudnn autotuning and TF32 matmuls on; bf16 training learns
    digits at least as well as float32 on the CPU, same seed and recipe (chance is 0.1)."""
    last = f"cuda:{torch.cuda.device_count() - 1}"
    recipe = get_recipe("proxy", epochs=6)
    model = tiny_model()
    on_gpu = fit(model, digits, recipe, device=last, seed=0)
    assert torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == "high"
    assert all(param.device == torch.device(last) for param in model.parameters())
    on_cpu = fit(tiny_model(), digits, recipe, device="cpu", seed=0)
    assert on_cpu.best_val_acc > 0.8, on_cpu.best_val_acc
    assert on_gpu.best_val_acc >= on_cpu.best_val_acc - 0.05, (on_gpu.best_val_acc, on_cpu.best_val_acc)


def test_device_parser_reads_every_cuda_name():
    count = torch.cuda.device_count()
    assert parse_device("auto") == torch.device("cuda") and parse_device("cuda") == torch.device("cuda")
    assert parse_device(f"cuda:{count - 1}") == torch.device("cuda", count - 1)
    assert select_device("cuda") == CUDA
    with pytest.raises(UsageError, match=rf"this machine has {count} CUDA device\(s\); expected cuda:0 to "
                                         rf"cuda:{count - 1}"):
        parse_device(f"cuda:{count}")


def test_loader_batches_pin_memory_and_arrive_channels_last_as_on_the_cpu(digits):
    """The DataLoader path (files, RandAugment) on CUDA: pinned host memory, non-blocking copies, channels-last; the
    oracle is the same loader on the CPU (evaluation transforms: no randomness)."""
    dataset = TensorImageDataset(digits.val, image_transform(digits.info, None, train=False))

    def batches(device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = LoaderBatches(dataset, device, batch_size=64, train=False, workers=2,
                               channels_last=device.type == "cuda")
        return list(loader.epoch(0))

    on_gpu, on_cpu = batches(CUDA), batches(torch.device("cpu"))
    for (images, labels), (cpu_images, cpu_labels) in zip(on_gpu, on_cpu, strict=True):
        assert images.is_cuda and images.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(images.cpu(), cpu_images) and torch.equal(labels.cpu(), cpu_labels)


def distance(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    """L2 distance between two state dicts over their floating-point tensors."""
    return math.sqrt(sum(float((first[name].double().cpu() - second[name].double().cpu()).pow(2).sum())
                         for name in first if first[name].is_floating_point()))


def test_resume_on_cuda_gives_the_uninterrupted_run_rng_states_included(digits, tmp_path):
    """As test_checkpoint's CPU test, on CUDA. Drop path and random erasing draw from the CUDA generator, mixup from
    numpy's: the generators' states after each resumed epoch must be bitwise those of the uninterrupted run. The
    weights must be as close to it as a second uninterrupted run is (CUDA kernels may sum in another order from run
    to run; a deterministic GPU gives equality)."""
    recipe = get_recipe("proxy", epochs=4, drop_path=0.1, mixup=0.8, cutmix=1.0, crop_padding=0.125, ema=True,
                        ema_decay=0.9, grad_clip=1.0, random_erasing=0.25)

    def run(folder: str, model: torch.nn.Module, stop_after: int | None = None, resume: bool = False):
        states = {}

        def remember(metrics):
            states[metrics.epoch] = (torch.cuda.get_rng_state(CUDA), torch.get_rng_state())
            if metrics.epoch == stop_after:
                raise StopTraining

        result = fit(model, digits, recipe, device="cuda", seed=0, checkpoint_dir=tmp_path / folder, resume=resume,
                     on_epoch=remember)
        return result, states

    straight_model, repeat_model = (tiny_model(TINY_FSNE, drop_path_rate=recipe.drop_path) for _ in range(2))
    straight, straight_states = run("straight", straight_model)
    run("repeat", repeat_model)
    interrupted, _ = run("resumed", tiny_model(TINY_FSNE, drop_path_rate=recipe.drop_path), stop_after=2)
    assert interrupted.epochs_run == 2
    assert "rng.cuda.0" in load_checkpoint(tmp_path / "resumed", with_state=True).state
    resumed_model = tiny_model(TINY_FSNE, seed=123, drop_path_rate=recipe.drop_path)
    torch.cuda.manual_seed(7)  # the resumed run must not depend on the generators it starts with
    resumed, resumed_states = run("resumed", resumed_model, resume=True)
    assert resumed.epochs_run == 4 and [m.epoch for m in resumed.history] == [1, 2, 3, 4]
    for epoch in (3, 4):
        assert all(torch.equal(mine, theirs) for mine, theirs in zip(resumed_states[epoch], straight_states[epoch]))
    straight_weights = straight_model.state_dict()
    noise = distance(repeat_model.state_dict(), straight_weights)
    assert distance(resumed_model.state_dict(), straight_weights) <= max(10 * noise, 1e-6), noise


@pytest.mark.slow
def test_four_trials_train_at_once_on_one_gpu_with_a_quarter_each(cli, tmp_path, monkeypatch):
    """`--gpus-per-model 0.25` packs four trials onto one GPU. The oracle is the trials' own record in study.db:
    each one trained for its `seconds` before Optuna stamped its end (datetime_complete), and those spans overlap
    four at once (never more: --max-concurrent 4)."""
    import optuna  # from .whl on the GPU image: imported here, so that without it only this test fails

    from test_search import TINY_SPACE

    # One GPU: Ray sees only the first visible device, so four trials cannot spread over several.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0])
    space = tmp_path / "tiny_space.py"
    space.write_text(TINY_SPACE)
    # Batch 16 and ten epochs: trials of several seconds, so that starting four actors cannot outlast the first.
    code, _, err = cli("search", "--budget", "60000", "--space", f"{space}:tiny", "--trials", "4", "--epochs", "10",
                       "--batch-size", "16", "--early-stopping", "none", "--gpus-per-model", "0.25",
                       "--cpus-per-model", "1", "--max-concurrent", "4", "--logger", "none", "--results-dir",
                       tmp_path / "results", "--name", "shared-gpu")
    assert code == 0, err
    run_dir = tmp_path / "results" / "shared-gpu"
    assert json.loads((run_dir / "search.json").read_text())["gpus_per_model"] == 0.25
    study = optuna.load_study(study_name="shared-gpu", storage=f"sqlite:///{run_dir / 'study.db'}")
    complete = [trial for trial in study.trials if trial.user_attrs.get("state") == "complete"]
    assert len(complete) == 4, [trial.user_attrs.get("reason") for trial in study.trials]
    spans = [(trial.datetime_complete.timestamp() - trial.user_attrs["seconds"], trial.datetime_complete.timestamp())
             for trial in complete]
    assert figures.running_at_once(spans) == 4, spans


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs two CUDA GPUs: DDP across devices (nccl, device_ids)"))])
def test_retrain_under_torchrun_on_cuda_gives_the_metrics_of_one_process(tmp_path, cli, digits, processes):
    """As test_retrain's CPU test, on CUDA: torchrun's processes (one per GPU) together give the metrics of one plain
    process, up to the rounding of bf16 kernels that may sum in another order (two images, 0.02 of loss)."""
    run = write_run(tmp_path / "run")
    args = ["retrain", str(run), "--top", "1", "--epochs", "3", "--recipe", "proxy", "--device", "cuda"]
    code, _, err = cli(*args, "--out", tmp_path / "one")
    assert code == 0, err
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(processes), "-m", "nas.cli", *args, "--out", str(tmp_path / "torchrun")],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    where = "cuda x 2 processes" if processes == 2 else "cuda"
    assert f"to train on {where} -> " in done.stdout and done.stdout.count("\ntest    ") == 1
    one, torchrun = (next((tmp_path / name / "retrain").iterdir()) for name in ("one", "torchrun"))
    for single, launched in zip(read_metrics(one), read_metrics(torchrun), strict=True):
        assert abs(float(single["val_acc"]) - float(launched["val_acc"])) <= 2 / len(digits.val) + 1e-9
        assert float(single["train_loss"]) == pytest.approx(float(launched["train_loss"]), abs=0.02)
    results = [json.loads((folder / "result.json").read_text()) for folder in (one, torchrun)]
    assert [result["world_size"] for result in results] == [1, processes]
    assert abs(results[0]["top1"] - results[1]["top1"]) <= 2 / results[0]["test_images"] + 1e-9


def arch_needing(size: int) -> ArchConfig:
    """An XCiT whose training copies (weights, gradients, AdamW's moments) need more than `size` bytes, counted on
    the meta device: the width doubles until they do."""
    arch = ArchConfig(embed_dim=1024, depth=2, num_heads=16, patch_size=2)
    while count_params(arch, DIGITS) * TRAINING_COPIES * BYTES_PER_PARAM <= size:
        arch = arch.replace(embed_dim=2 * arch.embed_dim)
    return arch


def test_memory_check_refuses_a_model_larger_than_the_gpus_free_memory_before_building_it(cli, tmp_path):
    free = torch.cuda.mem_get_info(CUDA)[0]
    arch = arch_needing(free)
    path = tmp_path / "arch.json"
    path.write_text(arch.to_json())
    allocated = torch.cuda.memory_allocated(CUDA)
    torch.cuda.reset_peak_memory_stats(CUDA)
    code, _, err = cli("train", path, "--dataset", "digits", "--epochs", "1", "--device", "cuda", "--out",
                       tmp_path / "out")
    assert code == 2 and err.count("\n") == 1, err
    assert f"has {count_params(arch, DIGITS):,} parameters" in err and "cuda:0 has" in err and "available" in err
    assert torch.cuda.max_memory_allocated(CUDA) == allocated and not (tmp_path / "out").exists()


def test_a_cuda_trained_model_exports_and_loads_on_the_cpu_with_timm(cli, digits, tmp_path):
    model = tiny_model(TINY_FSNE)
    fit(model, digits, get_recipe("proxy", epochs=1), device="cuda", seed=0, checkpoint_dir=tmp_path / "run",
        arch=TINY_FSNE)
    code, _, err = cli("export", tmp_path / "run", "--out", tmp_path / "export")
    assert code == 0, err
    loaded = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True).eval()
    trained = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    exported = loaded.state_dict()
    assert exported.keys() == trained.keys() and all(tensor.device.type == "cpu" for tensor in exported.values())
    assert all(torch.equal(exported[name], trained[name]) for name in trained)
    images = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        trained_on_cpu = model.cpu().to(memory_format=torch.contiguous_format).eval()
        torch.testing.assert_close(loaded(images), trained_on_cpu(images))


def event_seconds(model: torch.nn.Module, images: torch.Tensor, repeats: int = 10) -> float:
    """Median GPU time of one forward pass between two CUDA events (after three untimed passes)."""
    times = []
    with torch.inference_mode():
        for _ in range(3):
            model(images)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(images)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
    return statistics.median(times)


def test_latency_on_cuda_waits_for_the_gpu_as_cuda_events_do():
    """A ViT-S-sized model at 224 px: a batch of 256 keeps the GPU busy far longer than launching its kernels takes,
    so a timing that did not synchronise would read several times the events' throughput."""
    shape = DataShape(img_size=224, in_chans=3, num_classes=1000, patch_size=16)
    seed_everything(0)
    model = build_model(ArchConfig(backbone="vit", embed_dim=384, depth=12, num_heads=6, patch_size=16), shape)
    figures = measure_latency(model, shape, device="cuda", batch_sizes=(1, 256))
    batch = torch.randn(256, 3, 224, 224, device=CUDA)
    assert 0.75 <= figures["throughput"] * event_seconds(model, batch) / 256 <= 1.33, figures
    single = event_seconds(model, batch[:1]) * 1000.0
    assert 0.5 <= figures["latency_ms"] / single <= 2.0, (figures, single)
    assert device_name(CUDA) == torch.cuda.get_device_name(CUDA)


def test_compiled_model_gives_the_eager_output(digits):
    model = tiny_model(TINY_FSNE)
    recipe = get_recipe("proxy", epochs=1)
    training = build_training(model, recipe, digits.info.num_classes, CUDA, steps_per_epoch=1, compile=True)
    assert hasattr(training.eval_model, "_orig_mod")  # what torch.compile returns
    batches = make_batches(digits.val, digits.info, None, CUDA, batch_size=64, train=False, channels_last=True)
    images, _ = next(iter(batches.epoch(0)))
    model.eval()
    with torch.no_grad(), float32_math():
        eager, compiled = model(images), training.eval_model(images)
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-4)
