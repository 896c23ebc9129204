"""Datasets: one reader a file, the registry that loads and splits them, and the image cache.

    splits.py               what a reader returns: DatasetInfo, TensorSplit / FileSplit / CachedSplit, DatasetSplits
    registry.py             DATASETS, load_dataset (split, proxies, validation cap, the cache), DataRequest
    image_cache.py          images decoded once at a run's size into a memory-mapped array every process shares
    safe_pickle.py          dataset pickles read without running their code
    digits.py, mnist5k.py   built in
    cifar.py, stl10.py      torchvision's layouts
    stanford_cars.py, image_folders.py   image files (Stanford Cars; ImageNet and any class-folder tree)
    downsampled_imagenet.py ImageNet 16/32/64 px (Chrabaszcz et al. 2017), read into the image cache
    synthetic.py            learnable random images of any size

Imported on first use (PEP 562): a process that only builds a cache (its pool's workers) loads no torch.
"""
from qkvnas_core.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    **dict.fromkeys(("DATASETS", "load_dataset", "dataset_names", "DataRequest", "image_path"), "registry"),
    **dict.fromkeys(("DatasetInfo", "DatasetSplits", "TensorSplit", "FileSplit", "CachedSplit", "Split",
                     "IMAGENET_MEAN", "IMAGENET_STD"), "splits"),
    **dict.fromkeys(("open_cache", "decode_image", "default_cache_root", "RESIZE_METHOD", "ImageCache"),
                    "image_cache"),
    "load_pickle": "safe_pickle",
})
