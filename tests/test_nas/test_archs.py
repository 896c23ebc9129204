"""`nas arch RUN TRIAL` and `nas describe RUN:TRIAL`: one trial's architecture JSON with the data shape its run
searched at; architecture JSON without the fields that do not apply; arch ids unchanged by either."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import DEFAULT_ROWS, FSNE, TINY, write_run
from qkvnas_core.errors import UsageError
from nas.runs.results import trial_row, trials_frame, write_trials
from search_spaces.arch import ArchConfig, AttentionConfig, FFNConfig, QKVConfig, read_arch_json
from search_spaces.cost import count_flops, count_params
from search_spaces.presets import PRESETS
from search_spaces.shape import IMAGENET, DataShape
from trainers.datasets.registry import DataRequest
from trainers.model_folder import TrainingTask, start_folder
from trainers.recipe import get_recipe

ROOT = Path(__file__).resolve().parents[2]
# write_run's search.json: 8 px digits, one channel, ten classes; its patch size is the trials' own.
RUN_SHAPE = DataShape(img_size=8, in_chans=1, num_classes=10, patch_size=2)
# The front of a digits search written on 2026-11-21 (then docs/default-run/pareto.csv): ids and costs of that code.
EARLIER_FRONT = ROOT / "tests" / "data" / "digits-xcit-front-2026-11.csv"
# Every preset's id as computed before architecture JSON left out the fields that do not apply.
PRESET_IDS = {"xcit-n12": "xcit-b1977573", "xcit-t12": "xcit-f11a6819", "deit-tiny": "vit-bfad6eb3",
              "xcit-n12-sne": "xcit-22d8a9c7", "xcit-n12-psne": "xcit-51d4de67", "xcit-n12-fsne": "xcit-3ca82d1f",
              "vix-vit": "vit-8170c135", "vix-nystrom": "vit-2e4762a6", "vix-performer": "vit-21235ebc",
              "vix-linformer": "vit-af7d24b4", "vix-vit-conv": "vit-6f88faa4", "mlit-xxs": "vit-47038f81"}


def test_arch_writes_each_trial_with_the_runs_shape(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = write_run(tmp_path / "results" / "r1")
    for trial_id, arch, _, _ in DEFAULT_ROWS:
        code, out, err = cli("arch", run, trial_id)
        assert code == 0 and err == ""
        assert read_arch_json(out) == (arch, RUN_SHAPE)
        assert ArchConfig.from_json(out).arch_id == arch.arch_id
    # By number and by run name under results/, to a file: the same text; describe --json of RUN:TRIAL too.
    code, printed, _ = cli("arch", run, "t0001")
    code, out, _ = cli("arch", "r1", "1", "--out", tmp_path / "t0001.json")
    assert code == 0 and "t0001" in out and (tmp_path / "t0001.json").read_text() == printed
    code, described, _ = cli("describe", f"{run}:t0001", "--json")
    assert code == 0 and described == printed


def test_describe_counts_at_the_recorded_shape(cli, tmp_path):
    run = write_run(tmp_path / "r1")
    code, out, _ = cli("describe", f"{run}:1")
    assert code == 0
    assert f"FLOPs     {count_flops(FSNE, RUN_SHAPE):,} " in out
    assert f"params    {count_params(FSNE, RUN_SHAPE):,} " in out
    assert f"8 px, 1 channel, 10 classes (recorded in {run / 'search.json'})" in out and "assumed" not in out
    # A file records its shape: a ViT at 32 px, 3 channels, 100 classes.
    vit = ArchConfig(backbone="vit", embed_dim=32, depth=2, num_heads=2, patch_size=4,
                     attention=AttentionConfig(kind="nystrom", num_landmarks=8))
    shape = DataShape(img_size=32, in_chans=3, num_classes=100, patch_size=4)
    path = tmp_path / "vit.json"
    path.write_text(vit.to_json(indent=2, shape=shape))
    code, out, _ = cli("describe", path)
    assert code == 0 and f"FLOPs     {count_flops(vit, shape):,} " in out and f"recorded in {path}" in out
    # A given size replaces the recorded one; the rest stays.
    code, out, _ = cli("describe", path, "--img-size", "64")
    assert code == 0 and f"FLOPs     {count_flops(vit, DataShape(64, 3, 100, 4)):,} " in out
    assert "--img-size as given, the rest recorded in" in out


def test_describe_says_it_assumed_imagenet_for_a_file_without_a_shape(cli, tmp_path):
    arch = TINY.replace(patch_size=16)
    path = tmp_path / "old.json"
    path.write_text(arch.to_json())
    code, out, _ = cli("describe", path)
    assert code == 0 and f"FLOPs     {count_flops(arch, IMAGENET):,} " in out and "at 224 px (assumed)" in out
    assert f"ImageNet's, assumed: {path} records no data shape" in out
    code, out, _ = cli("describe", path, "--json")
    assert code == 0 and "data_shape" not in json.loads(out)
    # Patch 16 leaves 2 x 2 tokens at 32 px: describe fits it as nas train and nas retrain do (fit_patch_size).
    code, out, _ = cli("describe", path, "--img-size", "32", "--in-chans", "1", "--num-classes", "10", "--json")
    assert code == 0 and read_arch_json(out)[1] == DataShape(32, 1, 10, 4)
    code, out, _ = cli("describe", path, "--img-size", "32", "--patch-size", "16")
    assert code == 0 and " p16 " in out and "to fit" not in out  # an explicit patch is kept


def test_default_run_trial_costs_what_its_search_recorded(cli, tmp_path):
    """t0016 of an earlier digits run: describe at the run's 8 px gives the params and FLOPs the search wrote."""
    table = pd.read_csv(EARLIER_FRONT)
    rows = [(row["trial_id"], ArchConfig.from_json(row["arch"]), "complete", [row["val_acc"]])
            for _, row in table.iterrows()]
    run = write_run(tmp_path / "default", rows=rows)
    recorded = table.set_index("trial_id").loc["t0016"]
    code, out, _ = cli("describe", f"{run}:t0016")
    assert code == 0 and f"FLOPs     {int(recorded['flops']):,} " in out and f"{int(recorded['params']):,}" in out


def test_arch_ids_are_unchanged():
    """Ids hash every field, not the shorter JSON; a recorded data shape does not enter them."""
    assert {name: arch.arch_id for name, arch in PRESETS.items()} == PRESET_IDS
    table = pd.read_csv(EARLIER_FRONT)
    for _, row in table.iterrows():
        arch = ArchConfig.from_json(row["arch"])
        assert arch.arch_id == row["arch_id"]
        assert ArchConfig.from_json(arch.to_json(shape=RUN_SHAPE)).arch_id == row["arch_id"]


def test_fields_that_do_not_apply_are_left_out_and_read_back_as_defaults():
    xcit = PRESETS["xcit-n12"].to_dict()
    assert not {"stem", "pos", "attention", "ffn"} & set(xcit) and xcit["qkv"] == {"bias": True, "layers": ["separate"]}
    vit = PRESETS["vix-vit"].to_dict()
    assert not {"layer_scale", "tokens_norm"} & set(vit)
    assert vit["attention"] == {"kind": "softmax", "kv_heads": None}
    assert vit["ffn"] == {"kind": "mlp", "last_ratio": None}
    assert set(PRESETS["vix-nystrom"].to_dict()["attention"]) == {"kind", "kv_heads", "num_landmarks",
                                                                    "pinv_iterations", "residual_kernel"}
    assert set(PRESETS["vix-linformer"].to_dict()["attention"]) == {"kind", "kv_heads", "proj_len"}
    assert set(PRESETS["vix-performer"].to_dict()["attention"]) == {"kind", "kv_heads", "num_features"}
    assert set(PRESETS["mlit-xxs"].to_dict()["ffn"]) == {"kind", "last_ratio", "experts", "top_k", "balance_weight"}
    assert set(PRESETS["xcit-n12-psne"].to_dict()["qkv"]) == {"layers", "hidden_ratio", "activation", "bias",
                                                              "code_size", "members", "blocks"}
    assert "code_size" not in PRESETS["xcit-n12-sne"].to_dict()["qkv"]
    vit = ArchConfig(backbone="vit", embed_dim=32, depth=2, num_heads=2, pos="rope",
                     qkv=QKVConfig(layers=("shared", "separate"), members="qk", blocks=(1,)),
                     attention=AttentionConfig(kind="performer", num_features=7),
                     ffn=FFNConfig(kind="swiglu", last_ratio=0.5))
    for arch in [*PRESETS.values(), FSNE, vit]:
        assert ArchConfig.from_json(arch.to_json()) == arch


def test_the_xcit_only_fields_need_xcit():
    with pytest.raises(UsageError, match="layer_scale=0.5 needs backbone xcit"):
        ArchConfig(backbone="vit", layer_scale=0.5)


def test_a_training_folder_records_the_shape(tmp_path):
    task = TrainingTask(arch=FSNE, role="winner", source="t0001", folder=tmp_path / "train", recipe=get_recipe("proxy"),
                        overrides={}, data=DataRequest("digits", img_size=8))
    start_folder(task, RUN_SHAPE)
    assert read_arch_json((tmp_path / "train" / "arch.json").read_text()) == (FSNE, RUN_SHAPE)


def test_a_run_without_a_recorded_shape_gives_json_without_one(cli, tmp_path):
    run = write_run(tmp_path / "r1")
    settings = json.loads((run / "search.json").read_text())
    del settings["in_chans"]
    (run / "search.json").write_text(json.dumps(settings))
    code, out, err = cli("arch", run, "0")
    assert code == 0 and read_arch_json(out) == (TINY, None) and "records no data shape" in err


def bad_inputs(tmp_path: Path) -> list[tuple[list, str]]:
    run = write_run(tmp_path / "r1")
    rows = [trial_row(0, "complete", arch=TINY, params=10, flops=10, seed=0, curve=[0.5]),
            trial_row(1, "failed", "the space raised")]
    write_trials(run / "trials.csv", trials_frame(rows))
    shapeless = tmp_path / "bad.json"
    shapeless.write_text(json.dumps({**TINY.to_dict(), "data_shape": {"img_size": 0, "in_chans": 1,
                                                                      "num_classes": 10}}))
    return [(["arch", run, "t0099"], "trial t0099: not in"),
            (["arch", run, "1"], "trial t0001 of"),
            (["arch", run, "x1"], "expected a trial id such as t0016"),
            (["arch", tmp_path / "nowhere", "1"], "nowhere: not found"),
            (["arch", run, "0", "--out", tmp_path], "an existing folder"),
            (["describe", f"{run}:abc"], "expected a preset, an arch JSON file, or RUN:TRIAL"),
            (["describe", ":t0001"], "expected a preset, an arch JSON file, or RUN:TRIAL"),
            (["describe", f"{run}:t0099"], "trial t0099: not in"),
            (["describe", shapeless], "data_shape.img_size=0")]


def test_bad_inputs_are_one_line_exit_2(cli, tmp_path):
    for argv, fragment in bad_inputs(tmp_path):
        code, out, err = cli(*argv)
        assert code == 2 and fragment in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
