"""ArchConfig -> timm models: exact equivalence with timm's baselines, QKV swapping, small patches."""
import json

import pytest
import timm
import torch

from search_spaces.arch import ArchConfig, QKVConfig
from search_spaces.build import build_model, qkv_modules
from qkvnas_core.errors import UsageError
from search_spaces.presets import PRESETS, fit_patch_size, load_arch
from search_spaces.shape import IMAGENET, DataShape

EQUIVALENT = [("xcit-n12", "xcit_nano_12_p16_224", 3_053_224), ("deit-tiny", "vit_tiny_patch16_224", 5_717_416),
              ("xcit-t12", "xcit_tiny_12_p16_224", None)]


@pytest.mark.parametrize("preset,timm_name,expected_params", EQUIVALENT)
def test_preset_is_timm_model_to_the_parameter(preset, timm_name, expected_params):
    torch.manual_seed(0)
    reference = timm.create_model(timm_name, num_classes=1000).eval()
    ours = build_model(PRESETS[preset], IMAGENET).eval()
    ref_state, our_state = reference.state_dict(), ours.state_dict()
    assert list(our_state) == list(ref_state)
    assert {k: v.shape for k, v in our_state.items()} == {k: v.shape for k, v in ref_state.items()}
    params = sum(p.numel() for p in ours.parameters())
    assert params == sum(p.numel() for p in reference.parameters())
    if expected_params is not None:
        assert params == expected_params
    ours.load_state_dict(ref_state, strict=True)
    image = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(image), reference(image), rtol=0, atol=1e-6)


def test_xcit_nano_at_ten_classes_matches_papers_figure():
    ten_classes = DataShape(img_size=224, in_chans=3, num_classes=10)
    assert sum(p.numel() for p in build_model(PRESETS["xcit-n12"], ten_classes).parameters()) == 2_925_514


@pytest.mark.parametrize("preset", ["xcit-n12-sne", "xcit-n12-psne", "xcit-n12-fsne"])
def test_paper_structures_swap_every_xca_block(preset):
    arch = PRESETS[preset]
    model = build_model(arch.replace(depth=3), DataShape(img_size=32, in_chans=3, num_classes=10))
    modules = qkv_modules(model)
    assert len(modules) == 3
    assert all(block.attn.qkv is module for block, module in zip(model.blocks, modules))
    assert all(not hasattr(block.attn, "qkv") for block in model.cls_attn_blocks)


def test_blocks_subset_and_vit_backbone():
    arch = ArchConfig(backbone="vit", embed_dim=48, depth=4, num_heads=3, patch_size=4,
                      qkv=QKVConfig(layers=("shared", "separate"), blocks=(1, 3)))
    model = build_model(arch, DataShape(img_size=16, in_chans=3, num_classes=5))
    kinds = [type(block.attn.qkv).__name__ for block in model.blocks]
    assert kinds == ["Linear", "QKVEmbedding", "Linear", "QKVEmbedding"]
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)


@pytest.mark.parametrize("patch_size,img_size,tokens", [(16, 64, 16), (8, 32, 16), (4, 32, 64), (2, 8, 16)])
def test_xcit_patch_sizes(patch_size, img_size, tokens):
    arch = ArchConfig(embed_dim=32, depth=1, num_heads=2, patch_size=patch_size,
                      qkv=QKVConfig(layers=("shared", "shared"), code_size=2))
    model = build_model(arch, DataShape(img_size=img_size, in_chans=1, num_classes=3))
    x, _ = model.patch_embed(torch.randn(2, 1, img_size, img_size))
    assert x.shape == (2, tokens, 32)
    logits = model(torch.randn(2, 1, img_size, img_size))
    logits.sum().backward()
    assert logits.shape == (2, 3)
    assert all(p.grad is not None for p in model.patch_embed.parameters())


def test_timm_patch_embed_kept_for_16_and_8():
    model = build_model(ArchConfig(embed_dim=32, depth=1, num_heads=2, patch_size=8),
                        DataShape(img_size=32, in_chans=3, num_classes=3))
    assert type(model.patch_embed).__name__ == "ConvPatchEmbed"


def test_image_size_must_fit_patch():
    with pytest.raises(UsageError, match="img_size=8 with patch_size=16"):
        build_model(PRESETS["xcit-n12"], DataShape(img_size=8, in_chans=1, num_classes=10))


def test_presets_fit_small_datasets_through_patch_size():
    arch = PRESETS["xcit-n12-fsne"]
    assert fit_patch_size(arch, img_size=8, dataset_patch_size=2).patch_size == 2
    assert fit_patch_size(arch, img_size=224, dataset_patch_size=16).patch_size == 16
    assert fit_patch_size(arch, img_size=32, dataset_patch_size=4).patch_size == 4
    assert fit_patch_size(arch, img_size=32, dataset_patch_size=4, patch_size=8).patch_size == 8


def test_arch_json_round_trip_and_stable_id(tmp_path):
    arch = ArchConfig(embed_dim=96, depth=6, num_heads=3, mlp_ratio=3.0, patch_size=4,
                      qkv=QKVConfig(layers=("shared", "shared"), code_size=8, hidden_ratio=1.5, members="qk",
                                    blocks=(4, 0, 2)))
    again = ArchConfig.from_json(arch.to_json())
    assert again == arch and again.arch_id == arch.arch_id
    assert again.qkv.blocks == (0, 2, 4)
    path = tmp_path / "arch.json"
    path.write_text(arch.to_json(indent=2))
    assert load_arch(str(path)) == arch
    assert arch.replace(embed_dim=120).arch_id != arch.arch_id
    assert PRESETS["xcit-n12-fsne"].arch_id == "xcit-3ca82d1f"


@pytest.mark.parametrize("changes,message", [
    (dict(embed_dim=130), "not divisible by num_heads"),
    (dict(backbone="resnet"), "backbone='resnet'"),
    (dict(patch_size=3), "patch_size=3"),
    (dict(depth=0), "depth=0"),
    (dict(qkv=QKVConfig(layers=("shared", "separate"), blocks=(12,))), "below 12"),
])
def test_arch_validation_errors_name_the_value(changes, message):
    with pytest.raises(UsageError, match=message):
        PRESETS["xcit-n12"].replace(**changes)


def test_malformed_arch_json_is_one_clear_error(tmp_path):
    for text, message in [("{", "malformed"), ("[1, 2]", "expected a JSON object"),
                          (json.dumps({"embed_dim": 64, "wings": 2}), "unknown fields"),
                          (json.dumps({"qkv": {"layers": ["odd"]}}), "'odd'")]:
        with pytest.raises(UsageError, match=message):
            ArchConfig.from_json(text)
