"""Batches of cached splits (trainers/batches.py): the same batches as the in-memory path on the same images, and
a random-resized crop on the device equal to torchvision's, drawn as timm draws it."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dataset_files import write_photo_folders
from trainers.batches import (CROP_RATIO, FILES_RESIZED_CROP, CachedBatches, TensorBatches, make_batches,
                              resized_crop, resized_crop_boxes, resized_crop_share)
from trainers.datasets.registry import load_dataset
from trainers.datasets.splits import CachedSplit, TensorSplit
from trainers.recipe import PROXY, get_recipe

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    root = write_photo_folders(tmp_path_factory.mktemp("photos"), classes=4, per_class=12, size=(120, 90))
    return load_dataset("imagenet", root, img_size=16, image_cache=True, cache_dir=tmp_path_factory.mktemp("cache"))


def _in_memory(split: CachedSplit) -> TensorSplit:
    return TensorSplit(torch.from_numpy(np.array(split.cache().images[split.rows])), torch.from_numpy(split.labels))


def test_cached_batches_are_the_in_memory_batches_of_the_same_images(cached):
    recipe = PROXY.replace(crop_padding=0.125, resized_crop=None)
    for train in (True, False):
        split = cached.train if train else cached.val
        options = dict(batch_size=8, train=train, seed=4, crop_padding=recipe.crop_padding, hflip=0.5)
        from_cache = CachedBatches(split, cached.info, CPU, **options)
        from_memory = TensorBatches(_in_memory(split), cached.info, CPU, **options)
        assert len(from_cache) == len(from_memory) > 0
        for (images, labels), (expected, expected_labels) in zip(from_cache.epoch(2), from_memory.epoch(2)):
            assert torch.equal(labels, expected_labels) and torch.equal(images, expected)


def test_evaluation_covers_every_cached_image_once_in_order(cached):
    batches = make_batches(cached.val, cached.info, None, CPU, batch_size=5, train=False)
    labels = torch.cat([labels for _, labels in batches.epoch(0)])
    assert labels.tolist() == cached.val.labels.tolist()


def test_image_files_get_timms_resized_crop_and_in_memory_sets_none(cached, digits):
    assert resized_crop_share(cached.train, PROXY) == FILES_RESIZED_CROP == 0.08
    assert resized_crop_share(digits.train, PROXY) is None
    assert resized_crop_share(digits.train, PROXY.replace(resized_crop=0.5)) == 0.5
    assert resized_crop_share(cached.train, None) is None


def test_resized_crop_is_pils_resize_of_the_box_as_timm_does_it():
    """timm's RandomResizedCrop resizes the crop with PIL's resize(box=...), which reads the pixels just outside
    the box too; float images (mode F), bilinear, compared pixel by pixel. Crops are never larger than the output
    (a larger cached image is resized to the output first), so PIL's antialiasing never acts."""
    from PIL import Image

    images = torch.rand(6, 3, 20, 20)
    boxes = torch.tensor([[0, 0, 20, 20], [2, 3, 10, 12], [5, 0, 15, 8], [0, 9, 7, 11], [13, 13, 7, 7],
                          [1, 1, 1, 1]], dtype=torch.float32)
    flips = torch.tensor([False, True, False, True, False, True])
    out = resized_crop(images, boxes, flips, 20)
    for image, (top, left, height, width), flip, result in zip(images, boxes.int().tolist(), flips, out):
        for channel, plane in enumerate(image):
            resized = Image.fromarray(plane.numpy(), mode="F").resize(
                (20, 20), Image.BILINEAR, box=(left, top, left + width, top + height))
            expected = torch.from_numpy(np.array(resized))
            expected = expected.flip(-1) if flip else expected
            assert torch.allclose(result[channel], expected, atol=1e-5), (top, left, height, width)


def test_resized_crop_boxes_fit_and_follow_timms_ranges():
    boxes = resized_crop_boxes(4000, 32, 32, 0.08, torch.Generator().manual_seed(0))
    top, left, height, width = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 32).all() and (left + width <= 32).all()
    assert (height >= 1).all() and (width >= 1).all()
    share = height * width / 32 ** 2
    assert share.min() >= 0.07 and share.max() <= 1.0 and 0.45 < share.mean() < 0.6  # uniform in [0.08, 1]
    ratio = width / height
    assert ratio.min() >= CROP_RATIO[0] - 0.15 and ratio.max() <= CROP_RATIO[1] + 0.15
    assert torch.equal(boxes, resized_crop_boxes(4000, 32, 32, 0.08, torch.Generator().manual_seed(0)))
    # the area share a recipe asks for holds
    tight = resized_crop_boxes(500, 32, 32, 0.9, torch.Generator().manual_seed(1))
    assert (tight[:, 2] * tight[:, 3] / 1024).min() > 0.8


def test_the_fallback_is_the_centre_crop_at_the_nearest_ratio():
    """A 4:1 strip: no try fits a ratio of 3/4 to 4/3 at most shares, so many crops are the centre fallback."""
    boxes = resized_crop_boxes(200, 8, 32, 1.0, torch.Generator().manual_seed(0))
    fallback = boxes[(boxes[:, 3] == round(8 * CROP_RATIO[1])) & (boxes[:, 2] == 8)]
    assert len(fallback) > 0 and (fallback[:, 1] == (32 - round(8 * CROP_RATIO[1])) // 2).all()
    assert math.isclose(float(fallback[0, 3] / fallback[0, 2]), round(8 * CROP_RATIO[1]) / 8)


def test_training_batches_of_files_crop_on_the_device(cached):
    recipe = get_recipe("proxy")
    batches = make_batches(cached.train, cached.info, recipe, CPU, batch_size=8, train=True, seed=1)
    assert isinstance(batches, CachedBatches) and batches.resized_crop == FILES_RESIZED_CROP
    images, labels = next(iter(batches.epoch(1)))
    assert images.shape == (8, 3, 16, 16) and images.dtype == torch.float32
    again, _ = next(iter(make_batches(cached.train, cached.info, recipe, CPU, batch_size=8, train=True,
                                      seed=1).epoch(1)))
    assert torch.equal(images, again)
    # RandAugment needs PIL: a DataLoader over the cache's pixels, no JPEG decoded
    loader = make_batches(cached.train, cached.info, recipe.replace(randaugment="rand-m9-mstd0.5"), CPU,
                          batch_size=8, train=True, workers=0)
    images, labels = next(iter(loader.epoch(1)))
    assert images.shape == (8, 3, 16, 16)
