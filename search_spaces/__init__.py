"""What can be searched, and how a point in it becomes a model: configs, the QKV family, builders, costs, spaces."""
from qkvnas_core.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "ArchConfig": "arch", "QKVConfig": "arch", "structure_name": "arch",
    "QKVEmbedding": "qkv", "build_model": "build", "load_weights": "build",
    "DataShape": "shape", "IMAGENET": "shape",
    "count_params": "cost", "count_flops": "cost", "meta_model": "cost", "check_buildable": "cost",
    "SPACES": "spaces", "load_space": "spaces", "draw": "spaces",
    "PRESETS": "presets", "load_arch": "presets", "get_preset": "presets", "fit_patch_size": "presets",
    "load_exported": "export", "measure_latency": "latency",
})
