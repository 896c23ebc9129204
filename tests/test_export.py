"""`nas export`: safetensors + arch JSON read back by `load_exported`, and ONNX checked against PyTorch."""
from __future__ import annotations

import builtins
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from qkvnas_core.errors import UsageError
from search_spaces.arch import ArchConfig
from search_spaces.build import build_model
from search_spaces.export import load_exported
from search_spaces.shape import DataShape
from trainers.checkpoint import load_checkpoint
from trainers.engine import fit
from trainers.recipe import get_recipe
from trainers.runtime import seed_everything

TINY_FSNE = ArchConfig(embed_dim=32, depth=2, num_heads=2, patch_size=2,
                       qkv={"layers": ("shared", "shared"), "code_size": 4})
DIGITS = DataShape(img_size=8, in_chans=1, num_classes=10, patch_size=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    """A checkpoint folder of a tiny F-SNE model trained one epoch on digits."""
    folder = tmp_path_factory.mktemp("trained")
    seed_everything(0)
    model = build_model(TINY_FSNE, DIGITS)
    fit(model, digits, get_recipe("proxy", epochs=1), device="cpu", checkpoint_dir=folder, arch=TINY_FSNE)
    return folder


def test_safetensors_round_trip_gives_identical_outputs(cli, trained, tmp_path):
    out = tmp_path / "export"
    code, stdout, err = cli("export", trained, "--out", out)
    assert code == 0, err
    assert sorted(path.name for path in out.iterdir()) == ["arch.json", "model.json", "model.safetensors"]
    assert ArchConfig.from_json((out / "arch.json").read_text()) == TINY_FSNE
    description = json.loads((out / "model.json").read_text())
    assert (description["num_classes"], description["img_size"], description["in_chans"]) == (10, 8, 1)
    assert description["mean"] == [0.3053] and description["std"] == [0.3759]
    assert description["class_names"] == [str(digit) for digit in range(10)]

    reference = load_checkpoint(trained / "best.json").build_model().eval()
    images = torch.randn(4, 1, 8, 8)
    for path in (out, out / "model.safetensors"):
        model = load_exported(path)
        assert not model.training
        with torch.no_grad():
            assert torch.equal(model(images), reference(images))
    assert model.pretrained_cfg["input_size"] == (1, 8, 8) and model.pretrained_cfg["mean"] == (0.3053,)
    assert "load_exported(" in stdout


def test_loading_needs_model_code_only(cli, trained, tmp_path):
    out = tmp_path / "export"
    assert cli("export", trained, "--out", out)[0] == 0
    script = ("import sys\nfrom search_spaces.export import load_exported\n"
              f"model = load_exported({str(out)!r})\n"
              "print(sorted({name.split('.')[0] for name in sys.modules} & {'trainers', 'nas', 'ray', 'optuna', "
              "'pandas'}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_onnx_matches_pytorch_with_a_dynamic_batch(cli, trained, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    out = tmp_path / "export"
    assert cli("export", trained, "--out", out)[0] == 0
    code, stdout, err = cli("export", trained, "--format", "onnx", "--out", out)  # beside the safetensors export
    assert code == 0, err
    assert "check   onnxruntime vs PyTorch" in stdout and stdout.rstrip().endswith(": ok")
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    model = load_exported(out)
    for batch in (1, 5):
        images = torch.randn(batch, 1, 8, 8)
        (logits,) = session.run(["logits"], {"images": images.numpy()})
        with torch.no_grad():
            expected = model(images).numpy()
        assert logits.shape == (batch, 10)
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_onnx_check_is_skipped_without_onnxruntime(cli, trained, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    code, stdout, _ = cli("export", trained, "--format", "onnx", "--out", tmp_path / "onnx")
    assert code == 0 and "check   skipped: onnxruntime is not installed" in stdout
    assert (tmp_path / "onnx" / "model.onnx").stat().st_size > 0


def test_export_errors_are_one_line_and_overwrite_nothing(cli, trained, tmp_path):
    out = tmp_path / "export"
    assert cli("export", trained, "--out", out)[0] == 0
    before = (out / "model.safetensors").read_bytes()
    code, _, err = cli("export", trained, "--out", out)
    assert code == 2 and err.count("\n") == 1 and "already holds model.safetensors" in err
    assert (out / "model.safetensors").read_bytes() == before

    code, _, err = cli("export", tmp_path / "nowhere")
    assert code == 2 and err.count("\n") == 1 and "nowhere: not found" in err

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("best.json", "best.safetensors"):
        (broken / name).write_bytes((trained / name).read_bytes())
    (broken / "best.safetensors").write_bytes((trained / "best.safetensors").read_bytes()[:100])
    code, _, err = cli("export", broken)
    assert code == 2 and err.count("\n") == 1 and "not a readable safetensors file" in err


def test_an_opset_torch_cannot_export_the_model_at_is_one_line_and_writes_nothing(trained, tmp_path):
    """Opset 10 is in the range torch records for its exporter, but scaled dot-product attention needs 14: torch's
    own refusal becomes one line, and the graph torch prints as it fails stays off the console."""
    done = subprocess.run([sys.executable, "-m", "nas.cli", "export", str(trained), "--format", "onnx", "--opset", "10",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "ONNX opset 10: torch cannot export this model" in done.stderr and "version 14" in done.stderr
    assert done.stdout == "", done.stdout[:500]
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_load_exported_refuses_weights_of_another_architecture(cli, trained, tmp_path):
    out = tmp_path / "export"
    assert cli("export", trained, "--out", out)[0] == 0
    (out / "arch.json").write_text(TINY_FSNE.replace(embed_dim=16).to_json())
    with pytest.raises(UsageError, match=(r"model.safetensors \(for .*arch.json at .*model.json's inputs, .*\) "
                                          r"does not match the model: .*of another shape")):
        load_exported(out)
    with pytest.raises(UsageError, match="not found"):
        load_exported(tmp_path / "nothing")


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["softmax", "performer", "nystrom", "linformer"])
def test_every_vit_part_exports_to_onnx_with_a_dynamic_batch(attention, tmp_path):
    pytest.importorskip("onnxruntime")
    from search_spaces.arch import AttentionConfig, FFNConfig
    from search_spaces.export import export_onnx, onnx_difference

    arch = ArchConfig(backbone="vit", embed_dim=32, depth=2, num_heads=4, patch_size=2, stem="conv", pos="rope",
                      qkv={"layers": ("shared", "shared"), "code_size": 4},
                      attention=AttentionConfig(kind=attention, kv_heads=2, num_landmarks=8, proj_len=8),
                      ffn=FFNConfig(kind="moe", experts=(3,)))
    seed_everything(0)
    model = build_model(arch, DIGITS).eval()
    path = export_onnx(model, tmp_path / "model.onnx", img_size=8, in_chans=1)
    # Batch 3 against an export at batch 1: GQA, rope and expert routing must not be frozen by the tracer.
    assert onnx_difference(model, path, img_size=8, in_chans=1, batch=3) < 1e-4
