"""Bad input as a class: every reader of a user's file and every flag parser, fuzzed with Hypothesis.

The property, for each: the result is a valid object, or one UsageError whose one line names the file (and, for
a changed field, the field); never another exception. Inputs: arbitrary bytes, arbitrary JSON of every type in
every field, NaN, Infinity and huge numbers, missing and extra keys. Seeded (derandomize) and bounded, so the file
runs in well under a minute.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import random
import shutil
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from conftest import write_run
from nas.settings import flags
from nas.cli import COMMANDS, build_parser, main
from nas.runs.results import COLUMNS, load_settings, load_trials
from nas.runs.seed_stats import read_retrain
from search_spaces.spaces import load_space
from qkvnas_core.errors import UsageError
from qkvnas_core.units import parse_count
from search_spaces.arch import ArchConfig, AttentionConfig, FFNConfig, QKVConfig
from search_spaces.build import build_model
from search_spaces.cost import count_params
from search_spaces.model_tools.device import parse_device
from search_spaces.model_tools.export import hub_layout, load_exported, with_data_cfg
from search_spaces.model_tools.memory import TRAINING_COPIES, check_fits
from search_spaces.presets import load_arch
from search_spaces.shape import DataShape
from trainers.checkpoint import check_resumable, load_checkpoint, restore_resume_state
from trainers.engine import fit
from trainers.optim import build_optimizer, build_scheduler
from trainers.recipe import get_recipe

FUZZ = settings(derandomize=True, max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
DIGITS = DataShape(img_size=8, in_chans=1, num_classes=10, patch_size=2)
XCIT = ArchConfig(embed_dim=16, depth=1, num_heads=2, patch_size=2)
# A ViT with every part away from its default, so that every nested field is there to be changed.
VIT = ArchConfig(backbone="vit", embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, patch_size=2, pos="rope",
                 qkv=QKVConfig(layers=("shared", "separate"), hidden_ratio=0.5, code_size=4, members="qk", blocks=(0,)),
                 attention=AttentionConfig(kind="nystrom", kv_heads=1, num_landmarks=8, pinv_iterations=2,
                                           residual_kernel=3),
                 ffn=FFNConfig(kind="moe", last_ratio=1.0, experts=(2, 2), top_k=1))

# Any JSON value: NaN, Infinity, huge integers, deep lists and objects included.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8)
FIELD_NAMES = st.text(string.ascii_letters + "_", min_size=1, max_size=10)
TEXT = st.text(max_size=40) | st.sampled_from(["nan", "inf", "-inf", "1e400", "-0", "0", "1e-400", "9" * 40,
                                                "3.1X", " 7 ", "0x10", "1_000", "", "/", "a/b", "..", "\x00"])


def paths_in(document, prefix=()):
    """Every key path of a JSON document: (key,), (key, index), ..."""
    items = (document.items() if isinstance(document, dict) else enumerate(document) if isinstance(document, list)
             else ())
    for key, value in items:
        yield prefix + (key,)
        yield from paths_in(value, prefix + (key,))


@st.composite
def changed(draw, document):
    """(the path of the field changed, the changed copy): a field replaced by any JSON value, removed, or one
    added beside it."""
    path = draw(st.sampled_from(list(paths_in(document))))
    how = draw(st.sampled_from(["replace", "remove", "add"]))
    result = copy.deepcopy(document)
    parent = result
    for key in path[:-1]:
        parent = parent[key]
    if how == "remove" and isinstance(parent, dict):
        del parent[path[-1]]
    elif how == "add" and isinstance(parent, dict):
        path = path[:-1] + (draw(FIELD_NAMES.filter(lambda name: name not in parent)),)
        parent[path[-1]] = draw(JSON_VALUES)
    else:
        parent[path[-1]] = draw(JSON_VALUES)
    return path, result


def field_named(path) -> str:
    """The name a message gives a changed field: its last key that is a name (not a list index)."""
    return [key for key in path if isinstance(key, str)][-1]


def read(call, *names):
    """call()'s result, or None when it raised one UsageError of one line naming each of `names`."""
    try:
        return call()
    except UsageError as error:
        message = str(error)
        assert "\n" not in message, message
        for name in names:
            assert str(name) in message, (name, message)
        return None


def cli_code(*argv) -> tuple[int, str]:
    """`nas ARGV` in this process: (exit code, stderr); only a usage error (2) or success may come out."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main([str(arg) for arg in argv])
        except SystemExit as done:
            code = done.code
    return code, err.getvalue()


def small(arch: ArchConfig) -> bool:
    """Cheap enough to build for real in a test (and to count on the meta device)."""
    return arch.depth <= 4 and arch.embed_dim <= 256 and arch.mlp_ratio <= 8 and max(arch.ffn.experts) <= 8


# Architecture JSON (search_spaces.arch, search_spaces.presets.load_arch)

@FUZZ
@given(data=st.binary(max_size=200))
def test_arch_file_of_any_bytes(tmp_path, data):
    path = tmp_path / "arch.json"
    path.write_bytes(data)
    arch = read(lambda: load_arch(str(path)), path)
    assert arch is None or isinstance(arch, ArchConfig)


@FUZZ
@given(base=st.sampled_from([XCIT, VIT]), data=st.data())
def test_arch_file_with_any_field_changed(tmp_path, base, data):
    path_changed, document = data.draw(changed(base.to_dict()))
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(document))
    arch = read(lambda: load_arch(str(path)), path, field_named(path_changed))
    if arch is not None and small(arch):
        params = read(lambda: count_params(arch, DIGITS))
        assert params is None or params > 0


SMALL_ARCHS = st.fixed_dictionaries({
    "backbone": st.sampled_from(["xcit", "vit"]), "embed_dim": st.integers(1, 64), "depth": st.integers(1, 3),
    "num_heads": st.integers(1, 8), "mlp_ratio": st.floats(0.01, 8), "patch_size": st.sampled_from([1, 2, 4, 8]),
    "stem": st.sampled_from(["linear", "conv"]), "pos": st.sampled_from(["learned", "rope", "none"]),
    "attention": st.fixed_dictionaries({
        "kind": st.sampled_from(["softmax", "performer", "nystrom", "linformer"]),
        "kv_heads": st.none() | st.integers(1, 4), "num_landmarks": st.integers(1, 16),
        "residual_kernel": st.sampled_from([1, 3, 33]), "proj_len": st.integers(1, 80)}),
    "qkv": st.fixed_dictionaries({
        "layers": st.lists(st.sampled_from(["separate", "shared"]), min_size=1, max_size=3),
        "hidden_ratio": st.floats(0.01, 2), "code_size": st.integers(0, 8), "members": st.sampled_from(["qkv", "k"])}),
    "ffn": st.fixed_dictionaries({
        "kind": st.sampled_from(["mlp", "swiglu", "moe"]), "last_ratio": st.none() | st.floats(0.01, 2),
        "experts": st.lists(st.integers(1, 4), min_size=1, max_size=3), "top_k": st.integers(1, 2)}),
})


@FUZZ
@given(fields=SMALL_ARCHS, shape=st.sampled_from([DIGITS, DataShape(img_size=32, in_chans=3, num_classes=100)]))
def test_small_architectures_build_or_are_refused_in_one_line(fields, shape):
    """Whatever ArchConfig accepts either builds and runs an image at a small data shape or is one UsageError (a
    patch that does not tile the images, more Linformer tokens than the images give): never a crash inside a
    model's code."""
    arch = read(lambda: ArchConfig.from_dict(fields))
    model = arch and read(lambda: build_model(arch, shape))
    if model is not None:
        assert sum(p.numel() for p in model.parameters()) == count_params(arch, shape)
        with torch.no_grad():
            assert model.eval()(torch.zeros(2, shape.in_chans, shape.img_size, shape.img_size)).shape == (
                2, shape.num_classes)


# Checkpoints (trainers.checkpoint): the record, the weights, the resume state

@pytest.fixture(scope="module")
def checkpoint_folder(tmp_path_factory, digits):
    """A `last` checkpoint (record, weights, resume state) of a tiny model trained one epoch on digits."""
    folder = tmp_path_factory.mktemp("checkpoint")
    fit(build_model(XCIT, DIGITS), digits, get_recipe("proxy", epochs=1), device="cpu", checkpoint_dir=folder,
        arch=XCIT)
    return folder


def copy_checkpoint(source: Path, target: Path) -> Path:
    target.mkdir(exist_ok=True)
    for name in ("last.json", "last.safetensors", "last-state.safetensors"):
        (target / name).write_bytes((source / name).read_bytes())
    return target


@contextlib.contextmanager
def random_states_kept():
    """restore_resume_state sets the process's random generators: put them back for the tests after."""
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


@FUZZ
@given(data=st.data())
def test_checkpoint_record_with_any_field_changed(tmp_path, checkpoint_folder, data):
    folder = copy_checkpoint(checkpoint_folder, tmp_path / "checkpoint")
    record = json.loads((folder / "last.json").read_text())
    path_changed, document = data.draw(changed(record))
    (folder / "last.json").write_text(json.dumps(document))
    checkpoint = read(lambda: load_checkpoint(folder), folder / "last.json", field_named(path_changed))
    if checkpoint is None:
        return
    # What later steps read of a record that loaded: each is a value, or the same one-line error.
    assert checkpoint.epoch >= 0 and isinstance(checkpoint.shape, DataShape) and checkpoint.recipe is not None
    read(lambda: check_resumable(document, folder, checkpoint.recipe, checkpoint.record["seed"]))
    if checkpoint.arch is not None and small(checkpoint.arch):
        read(lambda: checkpoint.build_model(), folder)


@FUZZ
@given(name=st.sampled_from(["last.json", "last.safetensors", "last-state.safetensors"]),
       data=st.binary(max_size=300) | st.sampled_from([b"", b"\x00" * 8, b"\xff" * 16, b"{}", b"[]"]))
def test_checkpoint_file_of_any_bytes(tmp_path, checkpoint_folder, name, data):
    folder = copy_checkpoint(checkpoint_folder, tmp_path / "checkpoint")
    (folder / name).write_bytes(data)
    read(lambda: load_checkpoint(folder, with_state=True), folder / name)


@FUZZ
@given(data=st.data())
def test_resume_state_with_any_field_changed(tmp_path, checkpoint_folder, data):
    folder = copy_checkpoint(checkpoint_folder, tmp_path / "checkpoint")
    state_path = folder / "last-state.safetensors"
    tensors = load_safetensors_bytes(state_path.read_bytes())
    from safetensors import safe_open

    with safe_open(state_path, framework="pt") as handle:
        metadata = handle.metadata()
    scalars = json.loads(metadata["resume"])
    path_changed, document = data.draw(changed(scalars))
    if data.draw(st.booleans()):  # a random-generator tensor of another size, or gone
        name = data.draw(st.sampled_from(["rng.torch", "rng.numpy", "rng.python"]))
        tensors[name] = tensors[name][:data.draw(st.integers(0, 3))]
    metadata["resume"] = json.dumps(document)
    state_path.write_bytes(save_safetensors_bytes(tensors, metadata=metadata))
    checkpoint = read(lambda: load_checkpoint(folder, with_state=True), state_path)
    if checkpoint is None:
        return
    model = build_model(XCIT, DIGITS)
    recipe = get_recipe("proxy", epochs=1)
    optimizer = build_optimizer(model, recipe, torch.device("cpu"))
    with random_states_kept():
        scheduler = build_scheduler(optimizer, recipe, steps_per_epoch=10)
        read(lambda: restore_resume_state(checkpoint, optimizer=optimizer, scheduler=scheduler, ema_module=None),
             state_path)


# search.json and trials.csv (nas.results), and the commands that read them

def run_folder(folder: Path, settings: dict, rows: int = 2) -> Path:
    """A run folder as `nas search` writes it: search.json and a trials.csv of `rows` scored trials."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "search.json").write_text(json.dumps(settings))
    table = [{"trial_id": f"t{index:04d}", "state": "complete", "reason": "", "arch_id": arch.arch_id,
              "structure": arch.structure, "params": count_params(arch, DIGITS), "flops": 1000 + index,
              "val_acc": 0.5 + index / 10, "last_val_acc": 0.5, "epochs": 2, "seconds": 1.5, "seed": 0, **arch.flat(),
              "arch": arch.to_json()} for index, arch in enumerate([XCIT, VIT][:rows])]
    (folder / "trials.csv").write_text(pd.DataFrame(table, columns=COLUMNS).to_csv(index=False))
    return folder


SETTINGS = {"name": "run", "study_name": "run", "budget": 100_000, "results_dir": "results", "max_flops": None,
            "dataset": "digits", "data_dir": None, "classes": None, "train_fraction": 1.0, "img_size": 8,
            "val_fraction": 0.2, "space": "qkv", "patch_size": 2, "trials": 4, "epochs": 3, "grace_epochs": 1,
            "reduction_factor": 4, "recipe": "proxy", "recipe_overrides": {}, "max_concurrent": None,
            "cpus_per_model": 1.0, "gpus_per_model": 0.0, "address": None, "seed": 0, "max_infeasible_streak": 300,
            "verbose": False, "sessions": 1, "versions": {"torch": "2"}, "split_version": 2, "num_classes": 10,
            "in_chans": 1, "started": "2025-01-01T00:00:00", "finished": None, "ray_processes": [[12, 34]],
            "seconds": 12.5}


@FUZZ
@given(data=st.data())
def test_search_json_with_any_field_changed(tmp_path, data):
    path_changed, document = data.draw(changed(SETTINGS))
    folder = run_folder(tmp_path / "run", document)
    settings = read(lambda: load_settings(folder), folder / "search.json", field_named(path_changed))
    if settings is not None:
        from nas.engine.search import SearchSettings  # what a resume reads the settings as

        read(lambda: SearchSettings.from_dict({**settings, "name": folder.name}))  # as a resume does
        code, err = cli_code("show", folder)
        assert code == 0 or (code == 2 and err.count("\n") == 1), err


@FUZZ
@given(data=st.binary(max_size=200))
def test_search_json_of_any_bytes(tmp_path, data):
    folder = run_folder(tmp_path / "run", SETTINGS)
    (folder / "search.json").write_bytes(data)
    read(lambda: load_settings(folder), folder / "search.json")


@FUZZ
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_trials_csv_of_any_bytes(tmp_path, data):
    folder = run_folder(tmp_path / "run", SETTINGS)
    (folder / "trials.csv").write_bytes(data)
    read(lambda: load_trials(folder), folder / "trials.csv")


@FUZZ
@given(row=st.integers(0, 1), column=st.sampled_from(COLUMNS), value=TEXT | JSON_VALUES.map(json.dumps))
def test_trials_csv_with_any_cell_changed(tmp_path, row, column, value):
    folder = run_folder(tmp_path / "run", SETTINGS)
    table = pd.read_csv(folder / "trials.csv", dtype=str, keep_default_na=False)
    table.loc[row, column] = value
    (folder / "trials.csv").write_text(table.to_csv(index=False))
    if read(lambda: load_trials(folder), folder / "trials.csv") is not None:
        code, err = cli_code("show", folder)
        assert code == 0 or (code == 2 and err.count("\n") == 1), err


# retrain.csv (nas.runs.seed_stats.read_retrain), read by nas show and nas pareto

RETRAIN_ROWS = pd.DataFrame({"arch_id": ["a", "a", "b", "b"], "role": ["winner", "winner", "baseline", "baseline"],
                             "source": ["t0000", "t0000", "xcit-n12", "xcit-n12"], "structure": ["F-SNE"] * 2 + ["linear"] * 2,
                             "params": [100, 100, 120, 120], "flops": [9, 9, 9, 9], "top1": [0.5, 0.6, 0.55, 0.52],
                             "best_val_acc": [0.5, 0.6, 0.55, 0.52], "seed": [0, 1, 0, 1]})


@FUZZ
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_retrain_csv_of_any_bytes(tmp_path, data):
    folder = run_folder(tmp_path / "run", SETTINGS)
    (folder / "retrain.csv").write_bytes(data)
    read(lambda: read_retrain(folder), folder / "retrain.csv")
    code, err = cli_code("show", folder)
    assert code == 0 or (code == 2 and err.count("\n") == 1), err


@FUZZ
@given(row=st.integers(0, 3), column=st.sampled_from(list(RETRAIN_ROWS.columns)),
       value=TEXT | JSON_VALUES.map(json.dumps))
def test_retrain_csv_with_any_cell_changed(tmp_path, row, column, value):
    folder = run_folder(tmp_path / "run", SETTINGS)
    table = RETRAIN_ROWS.astype(str)
    table.loc[row, column] = value
    (folder / "retrain.csv").write_text(table.to_csv(index=False))
    if read(lambda: read_retrain(folder), folder / "retrain.csv") is not None:
        code, err = cli_code("show", folder)
        assert code == 0 or (code == 2 and err.count("\n") == 1), err


# result.json of a finished retrain (trainers.model_folder.read_result), read when a retrain resumes

RETRAIN_ARGS = ("--trial-ids", "t0000", "--epochs", "1", "--recipe", "proxy", "--device", "cpu")


@pytest.fixture(scope="module")
def finished_retrain(tmp_path_factory):
    """A run folder whose trial t0000 was retrained (1 epoch) into <run>/retrain/<arch_id>/."""
    folder = write_run(tmp_path_factory.mktemp("retrain") / "run")
    code, err = cli_code("retrain", folder, *RETRAIN_ARGS)
    assert code == 0, err
    return folder


@FUZZ
@given(data=st.data())
def test_result_json_with_any_field_changed(tmp_path, finished_retrain, data):
    folder = tmp_path / "run"
    shutil.rmtree(folder, ignore_errors=True)  # tmp_path is shared by every example
    shutil.copytree(finished_retrain, folder)
    result_path = next((folder / "retrain").glob("*/result.json"))
    path_changed, document = data.draw(changed(json.loads(result_path.read_text())))
    result_path.write_text(json.dumps(document))
    code, err = cli_code("retrain", folder, *RETRAIN_ARGS, "--resume")
    assert code == 0 or (code == 2 and err.count("\n") == 1), err
    assert result_path.read_text() == json.dumps(document)


@FUZZ
@given(data=st.binary(max_size=200))
def test_result_json_of_any_bytes(tmp_path, finished_retrain, data):
    folder = tmp_path / "run"
    shutil.rmtree(folder, ignore_errors=True)  # tmp_path is shared by every example
    shutil.copytree(finished_retrain, folder)
    result_path = next((folder / "retrain").glob("*/result.json"))
    result_path.write_bytes(data)
    code, err = cli_code("retrain", folder, *RETRAIN_ARGS, "--resume")
    assert code == 2 and err.count("\n") == 1 and str(result_path) in err, err


# Exported model folders (search_spaces.model_tools.export.load_exported)

@pytest.fixture(scope="module")
def export_folders(tmp_path_factory):
    """An export of each layout: qkvnas_xcit with the arch as its argument, and timm's own ViT with its sizes."""
    folders = {}
    for name, arch in (("qkvnas", XCIT), ("plain", ArchConfig(backbone="vit", embed_dim=16, depth=1, num_heads=2,
                                                                   patch_size=2))):
        model = with_data_cfg(build_model(arch, DIGITS), arch, DIGITS, mean=(0.3,), std=(0.4,), dataset="digits",
                              label_names=tuple("0123456789"))
        folders[name] = tmp_path_factory.mktemp(name)
        for file, data in hub_layout(model, arch, DIGITS).items():
            (folders[name] / file).write_bytes(data)
    return folders


def copy_export(source: Path, target: Path) -> Path:
    target.mkdir(exist_ok=True)
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


@FUZZ
@given(layout=st.sampled_from(["qkvnas", "plain"]), data=st.data())
def test_export_config_with_any_field_changed(tmp_path, export_folders, layout, data):
    folder = copy_export(export_folders[layout], tmp_path / "export")
    _, document = data.draw(changed(json.loads((folder / "config.json").read_text())))
    (folder / "config.json").write_text(json.dumps(document))
    # A change the config still accepts may leave the weights another shape: then the message names it too.
    model = read(lambda: load_exported(folder), folder / "config.json")
    assert model is None or not model.training


@FUZZ
@given(name=st.sampled_from(["config.json", "model.safetensors"]), data=st.binary(max_size=300))
def test_export_file_of_any_bytes(tmp_path, export_folders, name, data):
    folder = copy_export(export_folders["qkvnas"], tmp_path / "export")
    (folder / name).write_bytes(data)
    read(lambda: load_exported(folder), folder / name)


# A space file (search_spaces.spaces.load_space): any bytes under any suffix load or are one line naming the file

@FUZZ
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".py", ".txt", "", ".json"]))
def test_space_file_of_any_bytes(tmp_path, data, suffix):
    path = tmp_path / f"space{suffix}"
    path.write_bytes(data)
    space = read(lambda: load_space(f"{path}:space"), path)
    assert space is None or callable(space)


# Flags (nas.flags and each command's argparse types)

TYPES = {flags.positive_int: lambda value: isinstance(value, int) and 1 <= value <= flags.MAX_COUNT,
         flags.integer: lambda value: isinstance(value, int) and abs(value) <= flags.MAX_COUNT,
         flags.seed_argument: lambda value: isinstance(value, int) and 0 <= value <= flags.MAX_SEED,
         flags.seeds_argument: lambda value: (isinstance(value, int) and 1 <= value <= flags.MAX_COUNT) or (
             isinstance(value, tuple) and value and len(set(value)) == len(value)
             and all(isinstance(seed, int) and 0 <= seed <= flags.MAX_SEED for seed in value)),
         flags.fraction: lambda value: 0 < value < 1,
         flags.share: lambda value: 0 < value <= 1,
         flags.positive_float: lambda value: 0 < value < float("inf"),
         flags.non_negative_float: lambda value: 0 <= value < float("inf"),
         flags.finite_float: lambda value: abs(value) < float("inf"),
         flags.count_argument: lambda value: isinstance(value, int) and 1 <= value < 2**63,
         flags.run_name: lambda value: value.strip() and "/" not in value and value not in (".", ".."),
         flags.path_argument: lambda value: value and "\x00" not in value,
         flags.output_folder: lambda value: not Path(value).is_file(),
         flags.output_file: lambda value: not Path(value).is_dir(),
         flags.trial_argument: lambda value: isinstance(value, int) and value >= 0,
         flags.space_argument: lambda value: isinstance(value, str)}


@FUZZ
@given(kind=st.sampled_from(list(TYPES)), text=TEXT)
def test_every_flag_type_gives_a_value_in_its_domain_or_one_argparse_error(kind, text):
    try:
        value = kind(text)
    except argparse.ArgumentTypeError as error:
        assert "\n" not in str(error)
        return
    assert TYPES[kind](value), (kind.__name__, text, value)


@FUZZ
@given(text=TEXT)
def test_counts_and_devices_parse_or_are_one_usage_error(text):
    assert read(lambda: parse_count(text)) is None or 1 <= parse_count(text) < 2**63
    device = read(lambda: parse_device(text))
    assert device is None or device.type in ("cpu", "cuda")


def typed_options():
    """(command, option string, type) of every option of every command that takes a typed value."""
    for name in COMMANDS:
        parser = build_parser(name)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        for action in sub._actions:
            if action.option_strings and action.type is not None:
                yield name, action.option_strings[-1], action.type


def test_no_flag_takes_a_bare_int_or_float():
    """int and float accept -5, nan, inf and 1e400: every number a command takes goes through a checking type."""
    options = list(typed_options())
    assert len(options) > 30
    bare = [(name, option) for name, option, kind in options if kind in (int, float)]
    assert not bare, f"flags typed with bare int/float: {bare}"


POSITIONALS = {"describe": ["xcit-n12"], "arch": ["run", "t0000"], "export": ["checkpoint"], "pareto": ["run"],
               "retrain": ["run"], "transfer": [], "train": ["xcit-n12"], "search": [], "presets": [], "show": []}


@FUZZ
@given(option=st.sampled_from(list(typed_options())), text=TEXT)
def test_every_typed_flag_parses_or_exits_2_with_one_line(option, text):
    name, flag, _ = option
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            build_parser(name).parse_args([name, *POSITIONALS[name], f"{flag}={text}"])
        except SystemExit as done:
            assert done.code == 2 and err.getvalue().count("\n") == 1, err.getvalue()


@FUZZ
@given(preset=st.sampled_from(["xcit-n12", "deit-tiny", "vix-nystrom", "mlit-xxs"]),
       flag=st.sampled_from(["--img-size", "--num-classes", "--in-chans", "--patch-size"]),
       value=st.integers(-2, 2**31) | TEXT)
def test_describe_with_any_shape_flag_prints_or_exits_2_with_one_line(preset, flag, value):
    code, err = cli_code("describe", preset, f"{flag}={value}")
    assert code == 0 or (code == 2 and err.count("\n") == 1), err


# The four reported cases, through the installed `nas` command: exit 2 and one line, no traceback

def assert_one_line(argv, *fragments) -> None:
    code, err = cli_code(*argv)
    assert code == 2 and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_infinite_mlp_ratio_is_one_line(tmp_path):
    path = tmp_path / "arch.json"
    path.write_text('{"backbone": "xcit", "mlp_ratio": Infinity}')
    assert_one_line(["describe", path], str(path), "Infinity")
    assert_one_line(["train", path, "--out", tmp_path / "out"], str(path), "Infinity")


def test_architecture_file_of_random_bytes_is_one_line(tmp_path):
    path = tmp_path / "arch.json"
    path.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(255)) + b"\xff")
    assert_one_line(["describe", path], str(path), "not UTF-8")


def test_onnx_opset_torch_cannot_export_is_one_line(checkpoint_folder, tmp_path):
    assert_one_line(["export", checkpoint_folder, "--format", "onnx", "--opset", "3", "--out", tmp_path / "out"],
                    "--opset", "ONNX opset 3")
    assert not (tmp_path / "out").exists()


def test_model_too_big_for_memory_is_refused_before_it_is_built(tmp_path):
    """embed_dim 2**20 (1.9e14 parameters): refused with its size, before any tensor is allocated."""
    path = tmp_path / "arch.json"
    path.write_text(json.dumps({"backbone": "xcit", "embed_dim": 1048576}))
    at_digits = ArchConfig(embed_dim=1048576, patch_size=2)  # nas train gives it the dataset's patch size
    assert_one_line(["train", path, "--epochs", "1", "--out", tmp_path / "out"],
                    f"has {count_params(at_digits, DIGITS):,} parameters", "available")
    assert not (tmp_path / "out").exists()
    with pytest.raises(UsageError, match=f"has {count_params(at_digits, DIGITS):,} parameters"):
        check_fits(at_digits, DIGITS, torch.device("cpu"), TRAINING_COPIES)


def test_memory_check_counts_weights_gradients_and_adamw_state(monkeypatch):
    """Training needs 4 float32 copies of the parameters (weights, gradients, AdamW's two moments), inference one:
    a model is admitted with exactly that much memory available and refused with a byte less."""
    import search_spaces.model_tools.memory as memory

    params = count_params(XCIT, DIGITS)
    cpu = torch.device("cpu")
    for copies in (TRAINING_COPIES, 1):
        monkeypatch.setattr(memory, "available_memory", lambda device, free=params * copies * 4: free)
        assert check_fits(XCIT, DIGITS, cpu, copies) == params
        monkeypatch.setattr(memory, "available_memory", lambda device, free=params * copies * 4 - 1: free)
        with pytest.raises(UsageError, match=f"has {params:,} parameters"):
            check_fits(XCIT, DIGITS, cpu, copies)


# The image cache's manifest and downsampled ImageNet's pickles (trainers/datasets)

@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A finished image cache of four JPEGs, and the source it was made from."""
    from dataset_files import write_jpeg
    from trainers.datasets.image_cache import image_files, open_cache

    folder = tmp_path_factory.mktemp("jpegs")
    paths = []
    for index in range(4):
        write_jpeg(folder / f"{index}.jpg", (30 + 7 * index, 20), seed=index)
        paths.append(str(folder / f"{index}.jpg"))
    source = image_files("folder", paths, [0, 1, 0, 1], 8, tmp_path_factory.mktemp("cache"))
    cache = open_cache(source)
    return source, np.array(cache.images), json.loads((source.folder / "manifest.json").read_text())


def _opened_again(source, expected: np.ndarray) -> None:
    """open_cache on a cache folder changed by hand: the right images (rebuilt where need be) or one UsageError."""
    from trainers.datasets import image_cache

    image_cache._OPENED.clear()
    cache = read(lambda: image_cache.open_cache(source), source.folder)
    if cache is not None:
        assert np.array_equal(cache.images, expected)
        assert set(cache.unreadable_rows.tolist()) <= set(range(4))


@FUZZ
@given(data=st.data())
def test_cache_manifest_with_any_field_changed(tmp_path, tiny_cache, data):
    source, expected, manifest = tiny_cache
    _, document = data.draw(changed(manifest))
    (source.folder / "manifest.json").write_text(json.dumps(document))
    _opened_again(source, expected)


@FUZZ
@given(name=st.sampled_from(["manifest.json", "images.npy", "labels.npy"]), data=st.binary(max_size=300))
def test_cache_file_of_any_bytes(tmp_path, tiny_cache, name, data):
    source, expected, _ = tiny_cache
    (source.folder / name).write_bytes(data)
    _opened_again(source, expected)


# What a batch file's dict may hold instead of what it should: any JSON value, arrays of any dtype and shape.
ARRAYS = st.builds(lambda dtype, shape: np.zeros(shape, dtype=dtype),
                   st.sampled_from([np.uint8, np.int64, np.float32, np.bool_, object]),
                   st.lists(st.integers(0, 4), max_size=3).map(tuple))
BATCH_VALUES = JSON_VALUES | ARRAYS


@pytest.fixture(scope="module")
def imagenet16_files(tmp_path_factory):
    from dataset_files import write_downsampled_imagenet

    root = tmp_path_factory.mktemp("imagenet16")
    write_downsampled_imagenet(root, 16, per_file=2, val_count=2)
    return root


@FUZZ
@given(file=st.sampled_from(["Imagenet16_train/train_data_batch_4", "Imagenet16_val/val_data"]),
       data=st.binary(max_size=300))
def test_downsampled_imagenet_file_of_any_bytes(tmp_path, imagenet16_files, file, data):
    from trainers.datasets.registry import load_dataset

    root = tmp_path / "data"
    for folder in (root, tmp_path / "cache"):  # one example's files and cache never meet the next's
        shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(imagenet16_files, root)
    (root / file).write_bytes(data)
    read(lambda: load_dataset("imagenet16", root, cache_dir=tmp_path / "cache"), root / file)


@FUZZ
@given(key=st.sampled_from(["data", "labels", "extra"]), value=BATCH_VALUES, protocol=st.integers(0, 5),
       keep_other=st.booleans())
def test_downsampled_imagenet_batch_with_any_field_changed(tmp_path, imagenet16_files, key, value, protocol,
                                                           keep_other):
    from trainers.datasets.registry import load_dataset

    root = tmp_path / "data"
    for folder in (root, tmp_path / "cache"):  # one example's files and cache never meet the next's
        shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(imagenet16_files, root)
    content = {"data": np.zeros((2, 768), np.uint8), "labels": [1, 2]} if keep_other else {}
    content[key] = value
    path = root / "Imagenet16_train" / "train_data_batch_2"
    import pickle

    path.write_bytes(pickle.dumps(content, protocol=protocol))
    splits = read(lambda: load_dataset("imagenet16", root, cache_dir=tmp_path / "cache"), path)
    if splits is not None:
        assert splits.info.num_classes == 1000 and len(splits.train) + len(splits.val) >= 18


@FUZZ
@given(data=st.data())
def test_a_pickle_with_bytes_flipped_or_cut_reads_or_is_one_line(tmp_path, data):
    import pickle

    from trainers.datasets.safe_pickle import load_pickle

    whole = pickle.dumps({"data": np.arange(24, dtype=np.uint8).reshape(2, 12), "labels": [1, 2],
                          "mean": np.float64(3.0)}, protocol=data.draw(st.integers(0, 5)))
    spoiled = bytearray(whole)
    for _ in range(data.draw(st.integers(1, 4))):
        spoiled[data.draw(st.integers(0, len(spoiled) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(spoiled)))
    path = tmp_path / "batch"
    path.write_bytes(bytes(spoiled[:cut]))
    read(lambda: load_pickle(path, "a batch"), path)
