"""The dependencies' private APIs, each reached from one wrapper (nas/runtime/ray_compat.py, nas/runtime/optuna_compat.py,
search_spaces/timm_compat.py, search_spaces/model_tools/torch_compat.py), exercised against the installed versions. Each failure
names the private piece, the version installed and the version the wrapper was checked against."""
from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Iterator
from importlib.metadata import version

import pytest
import torch

# The version of each dependency the wrappers were written and checked against.
CHECKED = {"ray": "2.60.0", "optuna": "5.1.0", "timm": "1.0.31", "torch": "2.14.1"}


@contextlib.contextmanager
def reaching(package: str, what: str) -> Iterator[None]:
    """A wrapper's use of `package`'s private `what`: an import, attribute or call that fails is one clear failure."""
    try:
        yield
    except (ImportError, AttributeError, TypeError) as error:
        pytest.fail(f"{package} {version(package)} no longer has {what} as the wrapper reaches it (checked against "
                    f"{package} {CHECKED[package]}): {type(error).__name__}: {error}")


def test_ray_cluster_mode_sets_the_flag_ray_reads_when_it_picks_the_node_address():
    with reaching("ray", "ray._private.ray_constants.ENABLE_RAY_CLUSTER"):
        from nas.runtime.ray_compat import cluster_mode, ray_constants

        services = importlib.import_module("ray._private.services")
        assert "ray_constants.ENABLE_RAY_CLUSTER" in inspect.getsource(services.get_node_ip_address), (
            f"ray {version('ray')} no longer reads ENABLE_RAY_CLUSTER when it picks the node address (checked "
            f"against ray {CHECKED['ray']})")
        kept = ray_constants.ENABLE_RAY_CLUSTER
        with cluster_mode(not kept):
            assert ray_constants.ENABLE_RAY_CLUSTER is (not kept)
        assert ray_constants.ENABLE_RAY_CLUSTER is kept


def test_optuna_system_attrs_and_running_trials_reach_the_storage():
    import optuna

    with reaching("optuna", "Trial._trial_id / FrozenTrial._trial_id"):
        from nas.runtime.optuna_compat import running_trial, set_system_attr

        study = optuna.create_study()
        set_system_attr(study.ask(), "constraints", [1.0])
        frozen = study.get_trials(deepcopy=False)[0]
        running_trial(study, frozen).set_user_attr("state", "failed")
    trial = study.get_trials(deepcopy=False)[0]
    assert trial.system_attrs["constraints"] == [1.0] and trial.user_attrs["state"] == "failed"


def test_timm_model_args_are_what_timms_public_reader_returns():
    from timm.models import get_model_args

    with reaching("timm", "the model attribute _model_args"):
        from search_spaces.timm_compat import set_model_args

        model = torch.nn.Linear(2, 2)
        set_model_args(model, {"arch": {"depth": 1}, "img_size": 8})
        assert get_model_args(model) == {"arch": {"depth": 1}, "img_size": 8}


def test_torch_onnx_opsets_hold_the_default_opset():
    from search_spaces.model_tools.export import ONNX_OPSET

    with reaching("torch", "torch.onnx._constants.ONNX_MIN_OPSET / ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET"):
        from search_spaces.model_tools.torch_compat import torchscript_onnx_opsets

        opsets = torchscript_onnx_opsets()
    assert isinstance(opsets, range) and ONNX_OPSET in opsets and len(opsets) > 1
