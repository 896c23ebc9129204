"""Exact parameter counts on the meta device and FLOPs from torch.utils.flop_counter."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from search_spaces.build import build_model
from search_spaces.arch import ArchConfig
from search_spaces.cost import SkipMetaWrites, count_flops, count_params, meta_model
from qkvnas_core.errors import UsageError
from search_spaces.presets import PRESETS, shape_of
from search_spaces.shape import IMAGENET, DataShape


@pytest.mark.parametrize("name", list(PRESETS))
def test_meta_count_equals_a_real_build(name):
    real = build_model(PRESETS[name], shape_of(name))
    assert count_params(PRESETS[name], shape_of(name)) == sum(p.numel() for p in real.parameters())


def test_counts_match_timm_and_papers():
    assert count_params(PRESETS["xcit-n12"]) == 3_053_224
    assert count_params(PRESETS["deit-tiny"]) == 5_717_416
    # timm lists xcit_nano_12_p16_224 at 0.56 GMACs; the flop counter counts 2 FLOPs per multiply-add.
    assert count_flops(PRESETS["xcit-n12"]) / 2e9 == pytest.approx(0.56, abs=0.01)
    assert count_flops(PRESETS["deit-tiny"]) / 2e9 == pytest.approx(1.26, abs=0.01)


def test_meta_flops_equal_flops_of_a_real_forward():
    arch = PRESETS["xcit-n12-fsne"].replace(depth=2, patch_size=4)
    shape = DataShape(img_size=32, in_chans=3, num_classes=10)
    model = build_model(arch, shape).eval()
    counter = FlopCounterMode(display=False)
    # A fused CPU attention kernel is invisible to the flop counter; the math backend is the counted decomposition
    # that the meta device also takes.
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(torch.randn(1, 3, 32, 32))
    assert count_flops(arch, shape) == counter.get_total_flops()


def test_qkv_structure_changes_the_count_by_its_own_weights():
    dim, depth = 128, 12
    base = count_params(PRESETS["xcit-n12"])
    # SNE: each target gets C->C and C->C with biases, replacing one C->3C linear.
    sne_qkv = 3 * 2 * (dim * dim + dim)
    assert count_params(PRESETS["xcit-n12-sne"]) - base == depth * (sne_qkv - (3 * dim * dim + 3 * dim))
    # F-SNE with m=8: one shared C->C (+8 code columns), one shared C->C, 3 codes of 8.
    fsne_qkv = (dim * dim + 8 * dim + dim) + (dim * dim + dim) + 3 * 8
    assert count_params(PRESETS["xcit-n12-fsne"]) - base == depth * (fsne_qkv - (3 * dim * dim + 3 * dim))



def attention_flops(arch, img_size: int) -> int:
    """FLOPs the flop counter gives block 0's attention module of `arch` on the meta device, as count_flops does."""
    model = meta_model(arch, DataShape(img_size=img_size, in_chans=3, num_classes=10)).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, img_size, img_size, device="meta"))
    return sum(counter.get_flop_counts()[f"{type(model).__name__}.blocks.0.attn"].values())


def test_attention_flops_of_one_block_follow_the_hand_formula():
    dim, heads, patch, img_size = 64, 4, 4, 32
    tokens = (img_size // patch) ** 2 + 1  # patches + class token
    projections = 2 * tokens * dim * 3 * dim + 2 * tokens * dim * dim  # qkv and proj (2 FLOPs per multiply-add)
    # Softmax attention: q k^T and attn v, each tokens x tokens x head_dim per head, summed over heads.
    vit = ArchConfig(backbone="vit", embed_dim=dim, depth=1, num_heads=heads, patch_size=patch)
    assert attention_flops(vit, img_size) == projections + 2 * (2 * tokens * tokens * dim)
    # XCiT's cross-covariance attention: q^T k and v attn over channels, head_dim x head_dim x patches per head.
    patches, head_dim = tokens - 1, dim // heads
    xcit = ArchConfig(backbone="xcit", embed_dim=dim, depth=1, num_heads=heads, patch_size=patch)
    xca_projections = 2 * patches * dim * 3 * dim + 2 * patches * dim * dim
    assert attention_flops(xcit, img_size) == xca_projections + 2 * (2 * patches * head_dim * dim)


def test_a_preset_is_counted_at_its_own_shape_unless_told():
    assert shape_of("vix-vit") == DataShape(img_size=32, in_chans=3, num_classes=10, patch_size=1)
    assert shape_of("deit-tiny") == shape_of("path/to/arch.json") == IMAGENET
    assert shape_of("mlit-xxs", num_classes=10) == DataShape(img_size=36, in_chans=3, num_classes=10, patch_size=3)
    assert count_params(PRESETS["vix-vit"]) != count_params(PRESETS["vix-vit"], shape_of("vix-vit"))
    with pytest.raises(UsageError, match="img_size=0: expected a positive integer"):
        shape_of("xcit-n12", img_size=0)


class SeenBelow(TorchFunctionMode):
    """Records the torch functions that reach it: under SkipMetaWrites, those the skip let through."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", ""))
        return func(*args, **(kwargs or {}))


def test_weight_init_on_meta_tensors_is_skipped_whether_the_tensor_is_passed_by_position_or_keyword():
    seen = SeenBelow()
    with torch.device("meta"), seen, SkipMetaWrites():
        weight = torch.empty(8, 8)
        seen.names.clear()
        torch.nn.init.kaiming_uniform_(weight, a=5 ** 0.5)
        torch.nn.init.trunc_normal_(weight, std=0.02)
        weight.uniform_(-1, 1)
    # The skip reads each tensor's is_meta (a property, seen as __get__); nothing else may reach below it.
    assert [name for name in seen.names if name != "__get__"] == []
