"""Settings declared once: a search's settings (`SearchSettings`) and what each other command asks for
(`RetrainRequest`, `TransferRequest`, `TrainRequest`, `ParetoRequest`, `ExportRequest`) as one dataclass each, each
field's metadata its flag.

A `Setting` in a field's metadata holds what its flag shows (help, metavar, group), the parser its text goes
through, and whether a resume may change it. Everything else is derived from the fields: `nas search`'s flags
(`add_setting_flags`), the settings a command line gave (`given_settings`), the Python API's keywords and their
parsers (`keyword_parsers`, `keyword_signature`), the check of every value however it came (`check_settings`:
a typed value goes through its flag's parser as the text the flag would take, so one rule holds for the flag, the
API, a config file and search.json), and the fields a resume may change (`resumable`). Adding a flag to any command
is one field of its dataclass.

Every field is named as its flag (`cpus_per_model` for `--cpus-per-model`); search.json files written under the
older names (`RENAMED`) are read with the new ones. Imports nothing heavy: `nas show` reads search.json with it.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from qkvnas_core.errors import UsageError
from qkvnas_core.files import dataclass_from_json
from qkvnas_core.settings import Setting, setting, settings_of
from nas.settings.flags import (VOCABULARY, ArgumentContainer, add_flag, argument_type, choice_argument, comma_list,
                                count_argument, integer, integer_at_least, onnx_opset, path_argument, positive_int,
                                proxy_argument, run_name, seeds_argument, share, space_argument, startup_argument)
from nas.settings.naming import given, named
from nas.settings.objectives import (DEFAULT_OBJECTIVES, EARLY_STOPPING, SAMPLERS, cost_limits, parse_front_costs,
                                     parse_objectives)
from nas.settings.loggers import DEFAULT_LOGGERS, check_loggers, parse_loggers
from search_spaces.model_tools.device import DEFAULT_DEVICE
from trainers.holdout import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, DEFAULT_VAL_IMAGES, TRANSFER_VAL_FRACTION
from trainers.recipe import PROXY, TRANSFER, get_recipe

# A value as Python code gives it: the flag's text, a number, a path, or a list where the flag takes several.
Value = Union[str, int, float, os.PathLike, list, tuple, None]
# search.json's names of settings written before each was named as its flag.
RENAMED = {"cpus_per_trial": "cpus_per_model", "gpus_per_trial": "gpus_per_model", "loggers": "logger"}
# What a run recorded before these settings existed: one objective, TPE, ASHA, no validation cap.
EARLIER_DEFAULTS = {"objectives": ["val_acc"], "sampler": "tpe", "early_stopping": "asha", "val_images": None}
# nas search's argument groups, in the order --help shows them.
SEARCH_GROUPS = {
    "what": "what to search (--budget, or a --config file that gives it)",
    "data": "data (search scores on a validation split of the training set)",
    "trials": "trials and scheduling",
    "recipe": "",  # the recipe flags' own group (nas.settings.flags.add_recipe_arguments)
    "output": "output",
}
# nas transfer's.
TRANSFER_GROUPS = {"models": "models", "data": "data", "recipe": "", "running": "running"}
# nas retrain's.
RETRAIN_GROUPS = {
    "models": ("models", "at least one of --top, --trial-ids, --arch, --baseline"),
    "data": "data",
    "recipe": "",
    "running": "running",
}
# nas train's, nas pareto's and nas export's.
TRAIN_GROUPS = {"data": "data", "recipe": "", "running": "running"}
PARETO_GROUPS = {"front": "the front"}
EXPORT_GROUPS = {"export": "export"}
# The transfer sets of the paper's table (nas transfer's default).
PAPER_DATASETS = ("cifar10", "cifar100", "stanford_cars", "stl10")
# The formats `nas export` writes.
EXPORT_FORMATS = ("safetensors", "onnx")


def is_switch(name: str, spec: Setting) -> bool:
    return spec.parse is None and spec.metavar is None and spec.flag(name) not in VOCABULARY


def _default(item: dataclasses.Field) -> Any:
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return None if item.default is dataclasses.MISSING else item.default


def value_text(value: Any) -> str:
    """A value as its flag takes it: a list comma-separated (a tuple of one ends in a comma, as --seeds 7, does),
    a number as Python writes it (1.0 as 1)."""
    if isinstance(value, tuple) and len(value) == 1:
        return f"{value[0]},"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def _help(item: dataclasses.Field, spec: Setting) -> str:
    default = _default(item)
    nothing = default is None or default is False or default == ()
    shown = spec.default_text or ("" if nothing else value_text(default))
    if not shown:
        return spec.help
    return f"{spec.help} (default {shown})" if spec.help else f"default {shown}"


def add_setting_flags(parser: argparse.ArgumentParser, cls: type, groups: dict[str, str | tuple[str, str]],
                      add_recipe: Callable[[], None] | None = None) -> None:
    """One flag per setting of `cls`, in the order of `groups` (title, or title and description, by key); the
    recipe group is `add_recipe`'s (nas.settings.flags.add_recipe_arguments). Each flag defaults to None, so that what was
    given can be told apart from the field's default."""
    fields = settings_of(cls)
    for key, title in groups.items():
        if key == "recipe":
            if add_recipe is not None:
                add_recipe()
            continue
        group = parser.add_argument_group(*((title,) if isinstance(title, str) else title))
        for name, (item, spec) in fields.items():
            if spec.group == key:
                _add_setting_flag(group, name, item, spec)


def _add_setting_flag(group: ArgumentContainer, name: str, item: dataclasses.Field, spec: Setting) -> None:
    flag, text = spec.flag(name), _help(item, spec).replace("%", "%%")
    options: dict[str, Any] = {"dest": name, "default": None}
    if spec.repeat:
        options["action"] = "append"
    if flag in VOCABULARY:
        action = add_flag(group, flag, text, **options, **({"metavar": spec.metavar} if spec.metavar else {}))
    elif is_switch(name, spec):
        action = group.add_argument(flag, action="store_true", default=None, help=text)
    else:
        action = group.add_argument(flag, type=spec.parse, metavar=spec.metavar, help=text, **options)
    for alias in spec.aliases:
        group.add_argument(alias, type=action.type, dest=name, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def given_settings(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The settings of `cls` given on the command line (not None), by field; a repeated flag's values as one
    tuple (a value that is a list, such as --trial-ids t1,t2, spread into it)."""
    given = {}
    for name, (item, spec) in settings_of(cls).items():
        value = getattr(args, name, None)
        if value is None:
            continue
        given[name] = tuple(part for entry in value for part in (entry if isinstance(entry, list) else [entry])) \
            if spec.repeat else value
    return given


def parser_of(name: str, spec: Setting) -> Callable[[str], Any]:
    """What reads the setting's text: its flag's parser, `bool` for a switch, `str` for text taken as given."""
    word = VOCABULARY.get(spec.flag(name))
    if word is not None:
        return bool if word.metavar is None else spec.parse or word.type or str
    if is_switch(name, spec):
        return bool
    return spec.parse or str


def keyword_parsers(cls: type) -> dict[str, Callable[[str], Any]]:
    """The Python API's keywords for the settings of `cls`, each with its parser."""
    return {name: parser_of(name, spec) for name, (item, spec) in settings_of(cls).items()}

def keyword_signature(function: Callable, keywords: list[str]) -> inspect.Signature:
    """`function`'s signature with `keywords` as keyword-only parameters (default None) where it takes
    **settings, so that help(), a notebook's completion and inspect show every setting as a keyword."""
    signature = inspect.signature(function)
    parameters = [parameter for parameter in signature.parameters.values()
                  if parameter.kind is not parameter.VAR_KEYWORD]
    taken = {parameter.name for parameter in parameters}
    settings = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation="Value")
                for name in keywords if name not in taken]
    rest = [parameter for parameter in signature.parameters.values() if parameter.kind is parameter.VAR_KEYWORD]
    return signature.replace(parameters=[*parameters, *settings, *rest])


def check_value(name: str, value: Any, parse: Callable[[str], Any]) -> None:
    """`value` read as its flag would read it; a refusal is one UsageError naming the setting and the value."""
    if parse is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{given(name, value)}: expected true or false")
        return
    if parse is not str and isinstance(value, bool):
        raise UsageError(f"{given(name, value)}: {_expected_of(parse)}")
    try:
        inspect.unwrap(parse)(value_text(value))
    except UsageError as error:
        raise UsageError(f"{given(name, value_text(value))}: {str(error).rpartition(': ')[2]}") from None


def _expected_of(parse: Callable[[str], Any]) -> str:
    try:
        inspect.unwrap(parse)("True")
    except UsageError as error:
        return str(error).rpartition(": ")[2]
    return "a value of its flag"


def check_settings(instance: Any) -> None:
    """Every setting of a dataclass instance that is not None checked by its flag's parser (each value of a
    repeated flag)."""
    for name, (item, spec) in settings_of(type(instance)).items():
        value = getattr(instance, name)
        for part in (value if spec.repeat else () if value is None else (value,)):
            check_value(name, part, parser_of(name, spec))


def resumable(cls: type) -> tuple[str, ...]:
    """The settings a resume may change; the others define the run."""
    return tuple(name for name, (item, spec) in settings_of(cls).items() if spec.resumable)


def renamed(values: dict[str, Any]) -> dict[str, Any]:
    """Settings by their current names (RENAMED: older search.json and config files)."""
    return {RENAMED.get(name, name): value for name, value in values.items()}


def img_size_setting() -> Any:
    """--img-size as every command that loads data takes it."""
    return setting(None, group="data", help="images resized to it", default_text="the dataset's own")


def image_cache_setting() -> Any:
    """--image-cache, for the commands that read image files only when asked (a search always does)."""
    return setting(False, group="data", help="image files only (imagenet, folder, stanford_cars)")


def cache_dir_setting(detail: str, resumable: bool = False) -> Any:
    """--cache-dir: where the image cache is kept."""
    return setting(None, group="data", help=detail, default_text="~/.cache/qkvnas/images, or under $XDG_CACHE_HOME",
                   resumable=resumable)


@dataclass(frozen=True, kw_only=True)
class ImageReading:
    """How a command that trains models (nas train, nas retrain) gets its images: downloaded where they can be, at
    which size, through the image cache or not, and where that cache is."""

    download: bool = setting(False, group="data", help="")
    img_size: int | None = img_size_setting()
    image_cache: bool = image_cache_setting()
    cache_dir: str | None = cache_dir_setting("with --image-cache, and for ImageNet 16/32/64")


@dataclass
class SearchSettings:
    """Everything that defines a search; written to search.json and read back by a resume.

    Validates itself; a bad value is one UsageError naming it as the `nas search` flag that sets it (as the
    keyword inside the Python API).
    """

    name: str = setting(parse=run_name, metavar="NAME", help="run name",
                        default_text="<space>-<dataset>-<budget>-<time>")
    budget: int = setting(parse=count_argument, metavar="PARAMS", group="what",
                          help="parameter budget, e.g. 3.1M, 750K, 3.1e6")
    results_dir: str = setting("results", help="the run folder goes there")
    max_flops: int | None = setting(None, parse=count_argument, metavar="FLOPS", group="what",
                                    help="optional FLOPs limit per image, e.g. 200M (2 FLOPs per multiply-add)")
    objectives: list[str] = setting(
        default_factory=lambda: list(DEFAULT_OBJECTIVES), parse=argument_type(parse_objectives),
        metavar="val_acc,COST", group="what", listed=True,
        help="val_acc, then the costs searched against it: params, flops (needs --max-flops); val_acc alone: "
             "single-objective")
    space: str = setting("qkv", parse=space_argument, metavar="SPACE", group="what",
                         help="qkv, paper, lite, or path/to/file.py:function")
    patch_size: int | None = setting(None, group="what", help="", default_text="the dataset's")
    dataset: str = setting("digits", group="data", help="")
    data_dir: str | None = setting(None, group="data", help="")
    classes: int | None = setting(None, parse=positive_int, metavar="N", group="data",
                                  help="proxy: keep the first N classes")
    train_fraction: float = setting(1.0, parse=share, metavar="F", group="data",
                                    help="proxy: fraction of the training set")
    img_size: int | None = img_size_setting()
    val_fraction: float = setting(DEFAULT_VAL_FRACTION, group="data", help="it scores the trials")
    val_images: int | None = setting(
        DEFAULT_VAL_IMAGES, parse=positive_int, metavar="N", group="data",
        help="validation capped at a stratified sample of N of the held-out images (the others are not trained on "
             "either): enough to rank trials (binomial standard error at most 0.5 points), not an epoch's worth of "
             "evaluation on a proxy of ImageNet")
    cache_dir: str | None = cache_dir_setting("image files (imagenet, folder, stanford_cars) and ImageNet 16/32/64 are "
                                              "read once into the image cache kept there", resumable=True)
    split_seed: int | None = setting(None, group="data", help="", default_text="--seed")
    trials: int = setting(16, parse=positive_int, metavar="N", group="trials", resumable=True,
                          help="trials to train; infeasible draws do not count")
    epoch_budget: int | None = setting(
        None, parse=positive_int, metavar="EPOCHS", group="trials", resumable=True,
        help="stop drawing trials once the trials' epochs add up to this (running ones finish)")
    sampler: str = setting("tpe", parse=choice_argument(SAMPLERS), metavar="|".join(SAMPLERS), group="trials",
                           help="tpe (multi-objective TPE with costs), nsga2, or random")
    startup: str | None = setting(
        None, parse=startup_argument, metavar="random|proxy:NAME", group="trials", default_text="random",
        help="the first draws: the sampler's random ones (random), or proxy:NAME (the best 8 of 64 feasible draws "
             "by the training-free proxy, trained first). random is the default because proxy:zico's head start "
             "did not reach a better front sooner on mnist5k (docs/search.md)")
    screen: str | None = setting(
        None, parse=proxy_argument, metavar="proxy:NAME", group="trials", default_text="none: every draw trains",
        help="rung 0: each trial trained is the best of a pool of feasible draws by the training-free proxy "
             "(proxy:zico); the others are screened out untrained. Off by default: a screen narrows the front to "
             "what the proxy favours (docs/search.md)")
    screen_pool: int = setting(8, parse=integer_at_least(2), metavar="N", group="trials",
                               help="with --screen: the draws scored for each pool")
    screen_train: int = setting(1, parse=positive_int, metavar="K", group="trials",
                                help="with --screen: the best K of each pool are trained")
    early_stopping: str = setting("asha", parse=choice_argument(EARLY_STOPPING), metavar="|".join(EARLY_STOPPING),
                                  group="trials", help="asha (multi-objective ASHA with costs) or none")
    grace_epochs: int = setting(2, parse=positive_int, metavar="N", group="trials",
                                help="ASHA: epochs before a trial may be stopped; 2 because one epoch does not "
                                     "rank the qkv space (docs/search.md)")
    reduction_factor: int = setting(4, parse=integer_at_least(2), metavar="N", group="trials",
                                    help="ASHA: rungs at epochs / N^k; keep 1 in N at each; 4 because 2 (more "
                                         "rungs) reached no better front sooner (docs/search.md)")
    max_concurrent: int | None = setting(None, parse=positive_int, metavar="N", group="trials", resumable=True,
                                         help="trials at once", default_text="as resources allow")
    cpus_per_model: float = setting(1.0, group="trials", resumable=True, help="each trial trains one",
                                    aliases=("--cpus-per-trial",))
    gpus_per_model: float = setting(0.0, group="trials", resumable=True, help="each trial trains one",
                                    aliases=("--gpus-per-trial",))
    address: str | None = setting(None, group="trials", resumable=True, help="",
                                  default_text="a local Ray started for the search")
    seed: int = setting(0, group="trials", help="also seeds the sampler")
    recipe: str = setting(PROXY.name, group="recipe", help="")
    # Its range is the recipe's: Recipe checks it, as for every recipe flag.
    epochs: int = setting(10, parse=integer, group="recipe", help="")
    logger: list[str] = setting(
        default_factory=lambda: list(DEFAULT_LOGGERS), parse=argument_type(parse_loggers), metavar="NAMES",
        resumable=True, listed=True,
        help="where each trial's epochs are logged: tensorboard (event files in the run folder), mlflow, wandb "
             "(both local unless configured), comma-separated, or none")
    verbose: bool = setting(False, resumable=True, help="show Ray's own output")
    recipe_overrides: dict[str, Any] = field(default_factory=dict)
    max_infeasible_streak: int = 300
    study_name: str | None = None

    def __post_init__(self) -> None:
        # The Optuna study keeps its first name even if the run folder is renamed or moved later.
        self.study_name = self.study_name or self.name
        check_settings(self)
        cost_limits(self.objectives, self.budget, self.max_flops)
        check_loggers(self.logger)
        if self.screen_train > self.screen_pool:
            raise UsageError(f"{given('screen_train', self.screen_train)}: expected at most "
                             f"{given('screen_pool', self.screen_pool)}")
        if "epochs" in self.recipe_overrides:
            raise UsageError(f"{given('recipe_overrides', self.recipe_overrides)}: expected epochs as a setting of its "
                             f"own ({named('epochs')})")
        # The recipe is checked now, not once Ray runs the first trial.
        get_recipe(self.recipe, epochs=self.epochs, **self.recipe_overrides)

    @property
    def run_dir(self) -> Path:
        return Path(self.results_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSettings:
        """The settings search.json records (its other fields are the session's); each of its JSON type."""
        known = {item.name for item in dataclasses.fields(cls)}
        return dataclass_from_json(cls, {k: v for k, v in renamed(data).items() if k in known})


@dataclass(frozen=True)
class RetrainRequest(ImageReading):
    """What `nas retrain` asks for: which models, on which data, with which recipe, where and how to run them.

    Each field but `run`, `overrides` and `progress_bar` is a flag of `nas retrain` (and a keyword of
    `nas.retrain`). dataset, data_dir, val_fraction and split_seed default to the run's own (None); recipe None is
    the full recipe that fits the dataset (`full_recipe_name`); overrides change its fields. address: run the
    models as Ray tasks on that cluster (cpus/gpus_per_model size them); None trains them here, one after another.
    progress_bar: tqdm's bar through each epoch where stderr is a terminal (the Python API turns it off).
    """

    run: str
    top: int | None = setting(None, parse=positive_int, metavar="K", group="models",
                              help="the K best members of the run's Pareto front (params), best val_acc first")
    include_stopped: bool = setting(False, group="models", help="with --top")
    trial_ids: tuple[str, ...] = setting((), parse=comma_list, metavar="ID,ID", group="models", repeat=True, listed=True,
                                         help="trials of the run, by id (t0003 or 3)")
    arch: tuple[str, ...] = setting((), parse=path_argument, metavar="PRESET|arch.json", group="models", repeat=True,
                                    help="an architecture (repeatable)")
    baseline: tuple[str, ...] = setting((), metavar="PRESET|arch.json", group="models", repeat=True,
                                        help="an architecture trained under the same recipe, e.g. xcit-n12")
    dataset: str | None = setting(None, group="data", help="the one to retrain on, e.g. imagenet",
                                  default_text="the run's")
    data_dir: str | None = setting(None, group="data", help="", default_text="the run's when it is the run's dataset")
    patch_size: int | None = setting(None, group="data", help="of every model",
                                     default_text="each arch's, or the dataset's where it does not fit")
    val_fraction: float | None = setting(None, group="data", help="", default_text="the run's")
    split_seed: int | None = setting(None, group="data", help="", default_text="the run's")
    recipe: str | None = setting(None, group="recipe", help="")
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = setting(0, group="running", help="the first of --seeds")
    seeds: int | tuple[int, ...] = setting(
        1, parse=seeds_argument, metavar="N|S,S", group="running", listed=True,
        help="train every model N times, with seeds --seed ... --seed + N - 1, or with the seeds listed (0,3,7; one "
             "seed alone as 7,); the split stays. The table then gives each model's mean and 95% interval, and the "
             "paired difference to each --baseline")
    out: str | None = setting(None, group="running", help="instead of the run folder")
    resume: bool = setting(False, group="running", help="interrupted models continue exactly, finished ones are "
                                                         "skipped")
    device: str = setting(DEFAULT_DEVICE, group="running", help="")
    compile: bool = setting(False, group="running", help="")
    address: str | None = setting(None, group="running", help="the models train at once as Ray tasks there",
                                  default_text="one after another here")
    gpus_per_model: float = setting(0.0, group="running", help="with --address, at most 1", default_text="0: CPU")
    cpus_per_model: float = setting(1.0, group="running", help="with --address")
    progress_bar: bool = True

    def __post_init__(self) -> None:
        check_settings(self)
        if self.top is None and not self.trial_ids and not self.arch and not self.baseline:
            raise UsageError(f"nothing to retrain: expected {named('top')} K, {named('trial_ids')} ID,ID, "
                             f"{named('arch')} PRESET|arch.json or {named('baseline')} PRESET|arch.json")
        if self.address is None and (self.gpus_per_model != 0.0 or self.cpus_per_model != 1.0):
            raise UsageError(f"{named('gpus_per_model')} / {named('cpus_per_model')}: expected {named('address')} "
                             "(they size Ray tasks)")
        if not self.gpus_per_model <= 1:
            raise UsageError(f"{given('gpus_per_model', self.gpus_per_model)}: expected 0 to 1 (one process per model; "
                             "train one model on several GPUs with torchrun instead)")
        if self.address is not None and int(os.environ.get("WORLD_SIZE", 1)) > 1:
            raise UsageError(f"{named('address')} under torchrun: expected one or the other (Ray tasks, or one DDP "
                             "job)")

    @property
    def training_seeds(self) -> tuple[int, ...]:
        """The seeds each model trains with."""
        if isinstance(self.seeds, int):
            return tuple(range(self.seed, self.seed + self.seeds))
        return self.seeds


@dataclass(frozen=True)
class TrainRequest(ImageReading):
    """What `nas train` asks for: one architecture (`arch`, a preset or arch JSON: the command's argument), the data,
    the recipe (a named one; `overrides` change its fields) and where and how it trains. Each other field is a flag."""

    arch: str
    dataset: str = setting("digits", group="data", help="default digits")
    data_dir: str | None = setting(None, group="data", help="")
    patch_size: int | None = setting(None, group="data", help="",
                                     default_text="the architecture's, or the dataset's when that does not fit")
    val_fraction: float = setting(DEFAULT_VAL_FRACTION, group="data", help="as nas search")
    split_seed: int = setting(DEFAULT_SPLIT_SEED, group="data", help="as nas search")
    recipe: str = setting(PROXY.name, group="recipe", help="")
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = setting(0, group="running", help="")
    out: str | None = setting(None, group="running", help="checkpoints go there",
                              default_text="results/train/<arch_id>-<dataset>")
    resume: bool = setting(False, group="running", help="the one whose checkpoints are in --out")
    device: str = setting(DEFAULT_DEVICE, group="running", help="")
    compile: bool = setting(False, group="running", help="")

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class ParetoRequest:
    """What `nas pareto` asks for: the run (a folder, or a run name under results/: the command's argument), the
    costs the front is drawn against, what is added to it and where the files go. Each other field is a flag."""

    run: str
    cost: tuple[str, ...] = setting(
        ("params",), parse=argument_type(parse_front_costs), metavar="COST", group="front", repeat=True, listed=True,
        help="params, flops or latency; repeat or comma-separate for one front over several")
    reference: bool = setting(False, group="front",
                              help="mark XCiT-N12, the paper's F-SNE and DeiT-Tiny (ImageNet runs only)")
    measure_latency: bool = setting(False, group="front",
                                    help="time each front member and add latency_ms / throughput to pareto.csv")
    device: str = setting(DEFAULT_DEVICE, group="front", help="latency is measured there")
    include_stopped: bool = setting(False, group="front", help="")
    out: str | None = setting(None, group="front", help="the files go there", default_text="the run folder")

    def __post_init__(self) -> None:
        check_settings(self)

    @property
    def costs(self) -> list[str]:
        """The costs in order, each once."""
        return list(dict.fromkeys(self.cost)) or ["params"]


@dataclass(frozen=True)
class ExportRequest:
    """What `nas export` asks for: a trained model folder or TAG.json (`checkpoint`, the command's argument), the
    format, the output folder (None: the checkpoint's folder/export) and the ONNX opset (None: ONNX_OPSET)."""

    checkpoint: str
    format: str = setting("safetensors", parse=choice_argument(EXPORT_FORMATS), metavar="FORMAT", group="export",
                          help=" or ".join(EXPORT_FORMATS))
    out: str | None = setting(None, group="export", help="", default_text="CHECKPOINT's folder/export")
    opset: int | None = setting(None, parse=argument_type(onnx_opset), metavar="N", group="export",
                                help="ONNX opset, with --format onnx", default_text="17")

    def __post_init__(self) -> None:
        check_settings(self)
        if self.opset is not None and self.format != "onnx":
            raise UsageError(f"{given('opset', self.opset)}: expected {named('format')} onnx")


@dataclass(frozen=True)
class TransferRequest:
    """What `nas transfer` asks for: checkpoints (winners, baselines), transfer sets, recipe, where to run."""

    checkpoints: tuple[str, ...] = ()
    baseline: tuple[str, ...] = setting((), metavar="CHECKPOINT", group="models", repeat=True,
                                        help="a checkpoint fine-tuned as the others")
    datasets: str = setting(",".join(PAPER_DATASETS), metavar="NAME,NAME", group="data",
                            help="transfer sets (the paper's four)")
    data_dir: tuple[str, ...] = setting(
        (), metavar="DIR|NAME=DIR", group="data", repeat=True,
        help="a root holding each dataset's own folder (cifar-10-batches-py/, cifar-100-python/, stl10_binary/, "
             "stanford_cars/: torchvision's root), and/or NAME=DIR for one dataset (repeatable)")
    download: bool = setting(False, group="data", help="every missing dataset that can be (torchvision)")
    val_fraction: float = setting(TRANSFER_VAL_FRACTION, group="data", help="of each training set")
    split_seed: int = setting(DEFAULT_SPLIT_SEED, group="data", help="")
    recipe: str = setting(TRANSFER.name, group="recipe", help="")
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = setting(0, group="running", help="of the new head's initialisation")
    out: str | None = setting(None, group="running", help="", default_text="the first checkpoint's run folder")
    resume: bool = setting(False, group="running", help="interrupted fine-tunes continue, finished ones are skipped")
    device: str = setting(DEFAULT_DEVICE, group="running", help="")
    compile: bool = setting(False, group="running", help="")

    def __post_init__(self) -> None:
        if not self.checkpoints and not self.baseline:
            raise UsageError("nothing to fine-tune: expected CHECKPOINT arguments or --baseline CHECKPOINT")
        if self.seed < 0:
            raise UsageError(f"--seed {self.seed}: expected a non-negative integer")


def default_run_name(space: str | None, dataset: str | None, budget: int) -> str:
    """The name of a run not given one: <space>-<dataset>-<budget>-<time> (a space file: its function's name)."""
    return (f"{(space or SearchSettings.space).split(':')[-1]}-{dataset or SearchSettings.dataset}-{budget}-"
            f"{time.strftime('%Y%m%d-%H%M%S')}")
