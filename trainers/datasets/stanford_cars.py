"""Stanford Cars in torchvision's devkit layout: 196 car models, JPEGs listed by MATLAB annotation files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from qkvnas_core.errors import UsageError
from trainers.datasets.splits import (IMAGENET_MEAN, IMAGENET_STD, FileSplit, SourceData, SourceRequest, data_root,
                                      dataset_info, missing_files)

LAYOUT = ("stanford_cars/devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat, "
          "cars_train/ and cars_test/ (torchvision layout)")


def _load_mat(path: Path, key: str) -> np.ndarray:
    import scipy.io

    try:
        return np.atleast_1d(scipy.io.loadmat(str(path), squeeze_me=True)[key])
    except (OSError, ValueError, KeyError, scipy.io.matlab.MatReadError) as error:
        raise UsageError(f"{path}: expected a MATLAB file holding {key!r} (Stanford Cars devkit layout) ({error})"
                         ) from error


def _read_part(annotations_path: Path, images_dir: Path, num_classes: int) -> FileSplit:
    annotations = _load_mat(annotations_path, "annotations")
    try:
        samples = [(str(images_dir / str(row["fname"])), int(row["class"]) - 1)  # classes are 1-based in the devkit
                   for row in annotations]
    except (ValueError, IndexError, KeyError, TypeError) as error:
        raise UsageError(f"{annotations_path}: expected an 'annotations' struct array with fields fname and class "
                         f"(Stanford Cars devkit layout) ({error})") from error
    if any(not 0 <= label < num_classes for _, label in samples):
        raise UsageError(f"{annotations_path}: expected classes 1..{num_classes} (as many as cars_meta.mat names)")
    return FileSplit([path for path, _ in samples], [label for _, label in samples])


def read_stanford_cars(request: SourceRequest) -> SourceData:
    root = data_root(request, LAYOUT)
    base = root / "stanford_cars"
    devkit = base / "devkit"
    # torchvision keeps the labelled test annotations beside devkit/; some copies put them inside it
    test_annotations = next((path for path in (base / "cars_test_annos_withlabels.mat",
                                               devkit / "cars_test_annos_withlabels.mat") if path.is_file()),
                            base / "cars_test_annos_withlabels.mat")
    needed = (devkit / "cars_meta.mat", devkit / "cars_train_annos.mat", test_annotations)
    absent = [str(path.relative_to(root)) for path in needed if not path.is_file()]
    absent += [f"{path.relative_to(root)}/" for path in (base / "cars_train", base / "cars_test") if not path.is_dir()]
    if absent:
        download_note = " (Stanford Cars has no download source any more)" if request.download else ""
        raise missing_files(root, f"missing {', '.join(absent)}{download_note}", LAYOUT)
    class_names = tuple(str(name) for name in _load_mat(devkit / "cars_meta.mat", "class_names"))
    info = dataset_info("stanford_cars", len(class_names), 224, 3, IMAGENET_MEAN, IMAGENET_STD, class_names)
    return SourceData(info, _read_part(devkit / "cars_train_annos.mat", base / "cars_train", len(class_names)),
                      _read_part(test_annotations, base / "cars_test", len(class_names)))
