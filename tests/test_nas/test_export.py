"""`nas export`: timm's Hub layout that timm's own loader reads back (a plain-timm architecture without qkvnas),
the timm registry entries, torch.export, and ONNX checked against PyTorch."""
from __future__ import annotations

import builtins
import json
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import timm
import torch
from timm.models import save_for_hf

from qkvnas_core.errors import UsageError
from search_spaces.arch import ArchConfig, AttentionConfig, FFNConfig
from search_spaces.build import build_model
from search_spaces.model_tools.export import hub_layout, load_exported, with_data_cfg
from search_spaces.shape import DataShape
from search_spaces.timm_config import timm_architecture
from trainers.checkpoint import load_checkpoint
from trainers.engine import fit
from trainers.recipe import get_recipe
from trainers.runtime import seed_everything

TINY_FSNE = ArchConfig(embed_dim=32, depth=2, num_heads=2, patch_size=2,
                       qkv={"layers": ("shared", "shared"), "code_size": 4})
DIGITS = DataShape(img_size=8, in_chans=1, num_classes=10, patch_size=2)
PLAIN_VIT = ArchConfig(backbone="vit", embed_dim=32, depth=2, num_heads=2, mlp_ratio=3.0, patch_size=2,
                       qkv={"bias": False})
PLAIN_XCIT = ArchConfig(embed_dim=32, depth=2, num_heads=2, patch_size=8, layer_scale=0.5, tokens_norm=True)


def every_vit_part(attention: str, ffn: str = "moe") -> ArchConfig:
    return ArchConfig(backbone="vit", embed_dim=32, depth=2, num_heads=4, patch_size=2, stem="conv", pos="rope",
                      qkv={"layers": ("shared", "shared"), "code_size": 4},
                      attention=AttentionConfig(kind=attention, kv_heads=2, num_landmarks=8, proj_len=8),
                      ffn=FFNConfig(kind=ffn, experts=(3,)))


# One architecture per family the space builds: timm's own ViT and XCiT, and each part qkvnas adds to them.
FAMILIES = {"plain-vit": PLAIN_VIT, "plain-xcit-p8": PLAIN_XCIT, "xcit-fsne-p2": TINY_FSNE,
            "vit-nystrom-moe": every_vit_part("nystrom"), "vit-performer-swiglu": every_vit_part("performer", "swiglu"),
            "vit-linformer-mlp": every_vit_part("linformer", "mlp")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    """A checkpoint folder of a tiny F-SNE model trained one epoch on digits."""
    folder = tmp_path_factory.mktemp("trained")
    seed_everything(0)
    model = build_model(TINY_FSNE, DIGITS)
    fit(model, digits, get_recipe("proxy", epochs=1), device="cpu", checkpoint_dir=folder, arch=TINY_FSNE)
    return folder


def built(arch: ArchConfig) -> torch.nn.Module:
    seed_everything(0)
    return build_model(arch, DIGITS).eval()


def test_export_is_timms_hub_layout_and_timm_loads_it(cli, trained, tmp_path):
    out = tmp_path / "export"
    code, stdout, err = cli("export", trained, "--out", out)
    assert code == 0, err
    assert sorted(path.name for path in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert (config["architecture"], config["num_classes"], config["num_features"]) == ("qkvnas_xcit", 10, 32)
    assert ArchConfig.from_dict(config["model_args"]["arch"]) == TINY_FSNE
    assert {key: config["model_args"][key] for key in ("img_size", "in_chans", "num_classes")} == {
        "img_size": 8, "in_chans": 1, "num_classes": 10}
    cfg = config["pretrained_cfg"]
    assert (cfg["input_size"], cfg["mean"], cfg["std"], cfg["num_classes"]) == ([1, 8, 8], [0.3053], [0.3759], 10)
    assert cfg["tag"] == "digits" and cfg["label_names"] == [str(digit) for digit in range(10)]

    reference = load_checkpoint(trained / "best.json").build_model().eval()
    images = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        expected = reference(images)
        by_timm = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        torch.testing.assert_close(by_timm(images), expected)
        assert list(by_timm.pretrained_cfg["mean"]) == [0.3053] and by_timm.pretrained_cfg["tag"] == "digits"
        for path in (out, out / "model.safetensors"):
            model = load_exported(path)
            assert not model.training and torch.equal(model(images), expected)
    assert model.pretrained_cfg["input_size"] == (1, 8, 8) and model.pretrained_cfg["mean"] == (0.3053,)
    # What load_exported gives saves as the same folder again.
    assert json.loads(hub_layout(model, TINY_FSNE, DIGITS)["config.json"]) == config
    assert f"local-dir:{out}" in stdout and "load_exported(" in stdout


@pytest.mark.parametrize("arch", FAMILIES.values(), ids=FAMILIES.keys())
def test_save_for_hf_and_create_model_take_any_built_model(arch, tmp_path):
    """timm's own save_for_hf on build_model's model, read back by timm's local-dir loader: the same logits; timm's
    create_model with the recorded name and arguments builds build_model's tensors."""
    model = built(arch)
    save_for_hf(model, tmp_path, safe_serialization=True)
    name, model_args = timm_architecture(arch, DIGITS)
    assert json.loads((tmp_path / "config.json").read_text())["architecture"] == name
    images = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
        torch.testing.assert_close(loaded(images), model(images))
    created = timm.create_model(name, **model_args)
    assert {key: value.shape for key, value in created.state_dict().items()} == {
        key: value.shape for key, value in model.state_dict().items()}


def test_plain_timm_export_loads_where_qkvnas_is_not_installed(tmp_path):
    """A subprocess with timm and torch but without the project (no editable-install finder: `-S`, site-packages
    put on the path by hand) rebuilds plain ViT and XCiT exports as timm's own models, with the same logits."""
    images = torch.randn(2, 1, 8, 8)
    expected = {}
    for name, arch in (("vit", PLAIN_VIT), ("xcit", PLAIN_XCIT)):
        model = with_data_cfg(built(arch), arch, DIGITS, mean=(0.3,), std=(0.4,), dataset="digits")
        for file, data in hub_layout(model, arch, DIGITS).items():
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / file).write_bytes(data)
        with torch.no_grad():
            expected[name] = model(images)
    torch.save({"images": images, "expected": expected}, tmp_path / "io.pt")
    script = f"""
import sys
sys.path.append({sysconfig.get_paths()["purelib"]!r})
for project in ("search_spaces", "qkvnas_core", "trainers", "nas"):
    try:
        __import__(project)
    except ModuleNotFoundError:
        continue
    raise SystemExit(f"{{project}} is importable: the check would not show anything")
import timm, torch
io = torch.load({str(tmp_path / "io.pt")!r}, weights_only=True)
for name, expected in io["expected"].items():
    model = timm.create_model("local-dir:" + {str(tmp_path)!r} + "/" + name, pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(io["images"]), expected)
    print(name, model.pretrained_cfg["architecture"])
"""
    done = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["vit vit_tiny_patch16_224", "xcit xcit_nano_12_p16_224"]


@pytest.mark.parametrize("arch", [FAMILIES[key] for key in ("plain-vit", "xcit-fsne-p2", "vit-nystrom-moe",
                                                            "vit-performer-swiglu", "vit-linformer-mlp")],
                         ids=["plain-vit", "xcit-fsne-p2", "vit-nystrom-moe", "vit-performer-swiglu",
                              "vit-linformer-mlp"])
def test_torch_export_takes_exported_models(arch, tmp_path):
    """torch.export.export on a model loaded back from its export: the program gives the model's logits on other
    images of the traced shape (the mixture of experts runs densely, gates outside the top k 0, as for ONNX)."""
    model = with_data_cfg(built(arch), arch, DIGITS, mean=(0.3,), std=(0.4,), dataset="digits")
    for file, data in hub_layout(model, arch, DIGITS).items():
        (tmp_path / file).write_bytes(data)
    loaded = load_exported(tmp_path)
    program = torch.export.export(loaded, (torch.randn(2, 1, 8, 8),))
    images = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(images), loaded(images))


def test_timm_create_model_takes_the_architecture_as_arguments():
    model = timm.create_model("qkvnas_vit", arch=PLAIN_VIT.to_dict(), img_size=8, in_chans=1, num_classes=10,
                              patch_size=4)
    assert model.patch_embed.patch_size == (4, 4) and model.head.out_features == 10
    assert timm.create_model("qkvnas_xcit", arch=TINY_FSNE.to_dict()).pretrained_cfg["architecture"] == "qkvnas_xcit"
    with pytest.raises(UsageError, match=r"qkvnas_vit arguments.arch.backbone='xcit' but the model is qkvnas_vit"):
        timm.create_model("qkvnas_vit", arch=TINY_FSNE.to_dict())
    with pytest.raises(UsageError, match=r"qkvnas_xcit arguments has unknown fields \['depth'\]"):
        timm.create_model("qkvnas_xcit", arch=TINY_FSNE.to_dict(), depth=3)
    with pytest.raises(UsageError, match=r"qkvnas_xcit arguments.img_size=\[8, 16\]: expected square images"):
        timm.create_model("qkvnas_xcit", arch=TINY_FSNE.to_dict(), img_size=(8, 16))


def test_loading_needs_model_code_only(cli, trained, tmp_path):
    out = tmp_path / "export"
    assert cli("export", trained, "--out", out)[0] == 0
    script = ("import sys\nfrom search_spaces.model_tools.export import load_exported\n"
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
    assert sorted(path.name for path in out.iterdir()) == ["config.json", "model.onnx", "model.safetensors"]
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

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    code, _, err = cli("export", trained, "--out", other)
    assert code == 2 and err.count("\n") == 1 and "already holds config.json" in err
    assert sorted(path.name for path in other.iterdir()) == ["config.json"]

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


def test_load_exported_refuses_what_does_not_fit(cli, trained, tmp_path):
    out = tmp_path / "export"
    assert cli("export", trained, "--out", out)[0] == 0
    config = json.loads((out / "config.json").read_text())
    config["model_args"]["arch"]["embed_dim"] = 16
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match=(r"model.safetensors \(for .*config.json, xcit-\w+\) does not match the "
                                          r"model: .*of another shape")):
        load_exported(out)
    config["model_args"]["arch"]["embed_dim"] = 32
    config["pretrained_cfg"]["mean"] = [0.1, 0.2]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match=r"config.json: pretrained_cfg.mean has 2 values: expected one per channel"):
        load_exported(out)
    with pytest.raises(UsageError, match="config.json: not found"):
        load_exported(tmp_path / "nothing")

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for name in ("arch.json", "model.json", "model.safetensors"):
        (legacy / name).write_text("{}")
    with pytest.raises(UsageError, match=r"legacy: an export from before .* export the checkpoint again$"):
        load_exported(legacy)


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["softmax", "performer", "nystrom", "linformer"])
def test_every_vit_part_exports_to_onnx_with_a_dynamic_batch(attention, tmp_path):
    pytest.importorskip("onnxruntime")
    from search_spaces.model_tools.export import export_onnx, onnx_difference

    arch = every_vit_part(attention)
    seed_everything(0)
    model = build_model(arch, DIGITS).eval()
    path = export_onnx(model, tmp_path / "model.onnx", img_size=8, in_chans=1)
    # Batch 3 against an export at batch 1: GQA, rope and expert routing must not be frozen by the tracer.
    assert onnx_difference(model, path, img_size=8, in_chans=1, batch=3) < 1e-4
