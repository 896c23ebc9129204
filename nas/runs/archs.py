"""Architectures a user names, each with the data shape it was made for: a preset, an arch JSON file, or one trial
of a run (`nas arch RUN TRIAL`, `nas describe RUN:t0016`).

A run's trials.csv holds each trial's architecture alone; the shape its search built them for is the run's
(search.json). `trial_arch` puts the two together, so the JSON it gives is counted and built at the right size.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qkvnas_core.errors import UsageError
from qkvnas_core.files import user_path
from nas.runs.results import RunFolder, find_run, read_run
from nas.settings.trial_ids import format_trial_id, is_trial_reference, parse_trial_number
from search_spaces.arch import ArchConfig
from search_spaces.shape import IMAGENET, DataShape

SIZE_FLAGS = {"img_size": "--img-size", "in_chans": "--in-chans", "num_classes": "--num-classes"}


@dataclass(frozen=True)
class TrialArch:
    """One trial's architecture and the data shape its run searched at (None: its search.json records none)."""

    run: Path
    trial_id: str
    arch: ArchConfig
    shape: DataShape | None

    def to_json(self) -> str:
        """The architecture JSON `nas arch` writes: the architecture and, under `data_shape`, its shape."""
        return self.arch.to_json(indent=2, shape=self.shape) + "\n"


def run_shape(settings: dict[str, Any], arch: ArchConfig) -> DataShape | None:
    """The data shape a run's search.json records (image size, channels and classes all needed; None without
    them); its patch size is the run's, else the trial's own (runs from before search.json recorded it)."""
    if any(settings.get(name) is None for name in SIZE_FLAGS):
        return None
    return DataShape(img_size=settings["img_size"], in_chans=settings["in_chans"],
                     num_classes=settings["num_classes"], patch_size=settings.get("patch_size") or arch.patch_size)


def trial_arch(run: str | Path, trial: int) -> TrialArch:
    """Trial number `trial` of the run folder (or run name under results/) `run`: its architecture and the shape
    the run searched at. A run or trial that is not there, or a trial that built no architecture, is one
    UsageError."""
    found = read_run(find_run(run))
    trial_id = format_trial_id(trial)
    path = found.folder.trials_file
    rows = found.table[found.table["trial_id"] == trial_id]
    if rows.empty:
        known = sorted(found.table["trial_id"].astype(str))
        listed = ", ".join(known[:8]) + (f" ... ({len(known)} trials)" if len(known) > 8 else "")
        raise UsageError(f"trial {trial_id}: not in {path}; expected one of {listed or 'none (no trials yet)'}")
    row = rows.iloc[0]
    if "arch" not in row or not isinstance(row["arch"], str):
        raise UsageError(f"trial {trial_id} of {path} built no architecture ({row['state']}: {row.get('reason')}); "
                         "expected a trial that did")
    arch = ArchConfig.from_json(row["arch"], f"{path}: column arch of trial {trial_id}")
    return TrialArch(found.path, trial_id, arch, run_shape(found.settings, arch))


def named_arch(spec: str) -> tuple[ArchConfig, DataShape | None, str]:
    """A preset, an arch JSON file or RUN:TRIAL: its architecture, the data shape it was made for (None when
    none is recorded) and the file that records it (the preset's name for a preset)."""
    from search_spaces.presets import PRESETS, load_arch_and_shape

    if spec not in PRESETS and ":" in spec and not user_path(spec, "architecture").exists():
        run, _, trial = spec.rpartition(":")
        if not run or not is_trial_reference(trial):
            raise UsageError(f"{spec[:80]!r}: expected a preset, an arch JSON file, or RUN:TRIAL such as "
                             "results/run:t0016")
        found = trial_arch(run, parse_trial_number(trial))
        return found.arch, found.shape, str(RunFolder(found.run).settings_file)
    arch, shape = load_arch_and_shape(spec)
    return arch, shape, spec


@dataclass(frozen=True)
class Description:
    """An architecture and the data shape it is counted at; `shape_source` says where that shape came from, and
    `assumed` that part of it is ImageNet's for want of a recorded or given one."""

    arch: ArchConfig
    shape: DataShape
    shape_source: str
    assumed: bool

    @property
    def params(self) -> int:
        from search_spaces.cost import count_params

        return count_params(self.arch, self.shape)

    @property
    def flops(self) -> int:
        from search_spaces.cost import count_flops

        return count_flops(self.arch, self.shape)

    @property
    def timm_reference(self) -> str | None:
        from search_spaces.build import timm_reference_name

        return timm_reference_name(self.arch)

    def to_json(self) -> str:
        """The architecture's JSON, with the shape it is counted at unless part of that shape was assumed."""
        return self.arch.to_json(indent=2, shape=None if self.assumed else self.shape)


def describe_arch(spec: str, *, img_size: int | None = None, in_chans: int | None = None,
                  num_classes: int | None = None, patch_size: int | None = None) -> Description:
    """`named_arch(spec)` at the shape to count it at: the sizes given, else the recorded (or a preset's published)
    shape, else ImageNet's (224 px, 3 channels, 1000 classes), assumed. `patch_size` replaces the architecture's
    (and the shape's)."""
    from search_spaces.presets import PRESETS, fit_patch_size, patch_size_for

    arch, recorded, source = named_arch(spec)
    given = {name: value for name, value in
             {"img_size": img_size, "in_chans": in_chans, "num_classes": num_classes}.items() if value is not None}
    assumed = recorded is None and len(given) < len(SIZE_FLAGS)
    if recorded is None:
        words = f"ImageNet's, assumed: {source} records no data shape; --img-size, --in-chans, --num-classes set one"
    else:
        words = f"the published shape of preset {spec}" if spec in PRESETS else f"recorded in {source}"
    if given:
        flags = ", ".join(SIZE_FLAGS[name] for name in given)
        words = f"{flags} as given" + (f", the rest {words}" if len(given) < len(SIZE_FLAGS) else "")
    # Without a recorded shape the architecture's own patch is the one its images take.
    shape = dataclasses.replace(recorded or dataclasses.replace(IMAGENET, patch_size=arch.patch_size), **given)
    if patch_size is not None:
        arch, shape = arch.replace(patch_size=patch_size), dataclasses.replace(shape, patch_size=patch_size)
    elif "img_size" in given:
        # The rule nas train and nas retrain follow: a patch that does not fit the images takes theirs.
        fitted = fit_patch_size(arch, shape.img_size, patch_size_for(shape.img_size))
        if fitted.patch_size != arch.patch_size:
            words += f"; patch {arch.patch_size} -> {fitted.patch_size} to fit {shape.img_size} px (--patch-size sets it)"
            arch, shape = fitted, dataclasses.replace(shape, patch_size=fitted.patch_size)
    return Description(arch, shape, words, assumed)
