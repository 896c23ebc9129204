"""The ViT backbone's searchable parts as built models: attention, GQA, FFN/MoE, stem, position, ViX and mLiT."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from qkvnas_core.errors import UsageError
from search_spaces.arch import ATTENTIONS, FFNS, POSITIONS, STEMS, ArchConfig, AttentionConfig, FFNConfig
from search_spaces.attention import QKVAttention
from search_spaces.build import ConvStem, build_model
from search_spaces.cost import count_flops, count_params, meta_model
from search_spaces.ffn import SwiGLUMoE, auxiliary_loss
from search_spaces.presets import PRESET_SHAPES, PRESETS
from search_spaces.shape import DataShape
from trainers.optim import TrainStep

TINY_VIT = ArchConfig(backbone="vit", embed_dim=32, depth=3, num_heads=4, mlp_ratio=2.0, patch_size=2)
F_SNE = {"layers": ("shared", "shared"), "code_size": 4}
DIGITS = DataShape(img_size=8, in_chans=1, num_classes=10, patch_size=2)
FIVE_CLASSES = DataShape(img_size=8, in_chans=1, num_classes=5, patch_size=2)


def torchsummary_count(model: nn.Module) -> int:
    """What torchsummary counts (ViX's published figures): only parameters held as a module's weight or bias."""
    return sum(parameter.numel() for module in model.modules()
               for name, parameter in module.named_parameters(recurse=False) if name in ("weight", "bias"))


@pytest.mark.parametrize("attention,ffn,stem,pos", list(itertools.product(ATTENTIONS, FFNS, STEMS, POSITIONS)))
def test_every_combination_builds_trains_and_is_counted_on_meta(attention, ffn, stem, pos):
    arch = TINY_VIT.replace(qkv=F_SNE, attention=AttentionConfig(kind=attention, kv_heads=2, num_landmarks=8,
                                                                  proj_len=8),
                            ffn=FFNConfig(kind=ffn, last_ratio=1.0, experts=(2, 3)), stem=stem, pos=pos)
    torch.manual_seed(0)
    model = build_model(arch, FIVE_CLASSES, drop_path_rate=0.1)
    logits = model(torch.randn(4, 1, 8, 8))
    assert logits.shape == (4, 5)
    loss = logits.square().mean() + (auxiliary_loss(model) or 0)
    loss.backward()
    untouched = [name for name, p in model.named_parameters() if p.grad is None]
    # Only router-noise weights may miss a gradient (they are zero at init, as in Shazeer et al.); experts
    # that no token chose in this batch have none either.
    assert all("router_noise" in name or ".fc1_g" in name for name in untouched), untouched
    assert count_params(arch, FIVE_CLASSES) == sum(p.numel() for p in model.parameters())
    assert count_flops(arch, FIVE_CLASSES) > 0
    assert all(isinstance(block.attn, QKVAttention) for block in model.blocks)


def test_gqa_shrinks_keys_and_values_only():
    full, grouped = TINY_VIT, TINY_VIT.replace(attention=AttentionConfig(kv_heads=1))
    dim, kv_dim, depth = 32, 8, 3
    saved = depth * (2 * (dim - kv_dim) * dim + 2 * (dim - kv_dim))  # k and v weights and biases
    assert count_params(full, DIGITS) - count_params(grouped, DIGITS) == saved
    model = build_model(grouped, DIGITS)
    assert model.blocks[0].attn.qkv.out_features == dim + 2 * kv_dim


def test_conv_stem_is_vix_three_convolutions():
    stem = ConvStem(img_size=32, patch_size=1, in_chans=3, embed_dim=128)
    assert sum(p.numel() for p in stem.parameters()) == 93_248  # mLiT (arXiv 2407.17783): 3->32->64->128, 3x3, biases
    assert stem(torch.randn(2, 3, 32, 32)).shape == (2, 1024, 128)
    assert stem.num_patches == 1024
    assert ConvStem(img_size=8, patch_size=2, in_chans=1, embed_dim=16)(torch.randn(1, 1, 8, 8)).shape == (1, 16, 16)


def test_position_choices():
    learned = build_model(TINY_VIT, DIGITS)
    rope = build_model(TINY_VIT.replace(pos="rope"), DIGITS)
    none = build_model(TINY_VIT.replace(pos="none"), DIGITS)
    assert learned.pos_embed is not None and rope.pos_embed is None and none.pos_embed is None
    assert rope.blocks[0].attn.rope is not None and learned.blocks[0].attn.rope is None
    # The rotary table is rebuilt from the grid, never saved.
    assert set(rope.state_dict()) == set(none.state_dict())


def test_ffn_width_tapers_and_experts_grow_by_stage():
    arch = ArchConfig(backbone="vit", embed_dim=108, depth=9, num_heads=6, mlp_ratio=0.75, patch_size=3,
                      ffn=FFNConfig(kind="moe", last_ratio=0.25, experts=(3, 4, 5)))
    model = build_model(arch, PRESET_SHAPES["mlit-xxs"])
    widths = [block.mlp.fc2.in_features for block in model.blocks]
    assert widths[0] == 81 and widths[-1] == 27 and widths == sorted(widths, reverse=True)
    assert [block.mlp.num_experts for block in model.blocks] == [3, 3, 3, 4, 4, 4, 5, 5, 5]
    assert all(isinstance(block.mlp.act, nn.SiLU) for block in model.blocks)


def test_vix_presets_give_the_published_torchsummary_counts():
    published = {"vix-vit": 530_442, "vix-nystrom": 530_970, "vix-performer": 531_978, "vix-vit-conv": 623_178}
    for name, count in published.items():
        model = meta_model(PRESETS[name], PRESET_SHAPES[name])
        assert torchsummary_count(model) == count, name
        # Every parameter counts for the budget: the position embedding and class token come on top.
        assert count_params(PRESETS[name], PRESET_SHAPES[name]) == count + 1025 * 128 + 128
    # ViX's Linformer computes values as its keys (no value projection): 4 layers x 128 x 32 fewer than ours.
    linformer = meta_model(PRESETS["vix-linformer"], PRESET_SHAPES["vix-linformer"])
    assert torchsummary_count(linformer) == 415_754 + 4 * 128 * 32


def test_mlit_xxs_lands_near_the_papers_size():
    assert count_params(PRESETS["mlit-xxs"], PRESET_SHAPES["mlit-xxs"]) == pytest.approx(0.67e6, rel=0.02)


@pytest.mark.parametrize("kind", ["performer", "nystrom", "linformer"])
def test_linear_attentions_flops_grow_linearly_with_tokens(kind):
    def attention_flops(img_size: int, attention: str) -> int:
        arch = TINY_VIT.replace(depth=1, patch_size=1, attention=AttentionConfig(kind=attention, proj_len=16,
                                                                                 num_landmarks=16))
        model = meta_model(arch, DataShape(img_size=img_size, in_chans=1, num_classes=10)).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.empty(1, 1, img_size, img_size, device="meta"))
        return sum(counter.get_flop_counts()["VisionTransformer.blocks.0.attn"].values())

    # 16 -> 64 px is 256 -> 4,096 tokens (x16): quadratic attention grows ~x256, linear ones ~x16.
    assert attention_flops(64, kind) / attention_flops(16, kind) < 17
    assert attention_flops(64, "softmax") / attention_flops(16, "softmax") > 100


def test_linformer_needs_its_token_count_and_xcit_refuses_vit_parts():
    arch = TINY_VIT.replace(attention=AttentionConfig(kind="linformer", proj_len=64))
    with pytest.raises(UsageError, match="proj_len=64 but 8 px images at patch 2 give 17 tokens"):
        build_model(arch, DIGITS)
    with pytest.raises(UsageError, match="needs backbone vit"):
        ArchConfig(backbone="xcit", ffn=FFNConfig(kind="swiglu"))
    with pytest.raises(UsageError, match="kv_heads=3 with num_heads=4"):
        TINY_VIT.replace(attention=AttentionConfig(kv_heads=3))
    with pytest.raises(UsageError, match="rope.*head dim 6"):
        TINY_VIT.replace(embed_dim=24, pos="rope")


def test_new_fields_round_trip_and_enter_the_id_only_when_set():
    arch = PRESETS["mlit-xxs"].replace(pos="none", stem="conv")
    again = ArchConfig.from_json(arch.to_json())
    assert again == arch and again.arch_id == arch.arch_id
    ids = {TINY_VIT.arch_id, TINY_VIT.replace(pos="rope").arch_id, TINY_VIT.replace(stem="conv").arch_id,
           TINY_VIT.replace(attention=AttentionConfig(kind="performer")).arch_id,
           TINY_VIT.replace(ffn=FFNConfig(kind="moe")).arch_id}
    assert len(ids) == 5
    # Knobs of another attention kind do not count: equal models, equal ids.
    assert (AttentionConfig(kind="softmax", proj_len=8) == AttentionConfig(kind="softmax")
            and TINY_VIT.replace(attention=AttentionConfig(proj_len=8)).arch_id == TINY_VIT.arch_id)


def test_balance_loss_reaches_the_training_step():
    arch = TINY_VIT.replace(ffn=FFNConfig(kind="moe", experts=(3,), balance_weight=1.0))
    torch.manual_seed(0)
    model = build_model(arch, DIGITS)
    task_losses = []

    def cross_entropy(logits, targets):
        task_losses.append(nn.functional.cross_entropy(logits, targets))
        return task_losses[-1]

    step = TrainStep(model, model, torch.optim.SGD(model.parameters(), lr=0.0), loss_fn=cross_entropy,
                     device=torch.device("cpu"))
    loss = step(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))
    balance = sum(float(module.aux_loss.detach()) for module in model.modules() if isinstance(module, SwiGLUMoE))
    assert balance > 0
    assert float(loss) == pytest.approx(float(task_losses[0].detach()) + balance, rel=1e-6)


def test_nystrom_with_one_kv_head_trains_without_corrupting_memory():
    """torch 2.14's oneDNN Conv2d backward corrupts the heap on one-channel inputs of some lengths (17 tokens
    here); the residual convolution is 1-D. In a child process: a corrupted heap aborts the process."""
    script = ("import torch\n"
              "from search_spaces.arch import ArchConfig, AttentionConfig\n"
              "from search_spaces.build import build_model\n"
              "from search_spaces.shape import DataShape\n"
              "arch = ArchConfig(backbone='vit', embed_dim=64, depth=2, num_heads=8, patch_size=2,\n"
              "                  attention=AttentionConfig(kind='nystrom', kv_heads=1))\n"
              "model = build_model(arch, DataShape(img_size=8, in_chans=1, num_classes=10, patch_size=2))\n"
              "for _ in range(10):\n"
              "    model(torch.randn(64, 1, 8, 8)).sum().backward()\n")
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "MALLOC_CHECK_": "3"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
