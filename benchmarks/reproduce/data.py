"""The four data sets of the reproduction, all available offline.

- `mnist`: the bundled 5,000-image MNIST sample (4,000 train / 1,000 test).
- `digits`: scikit-learn's 8x8 handwritten digits (1,797 real images; UCI
  "Optical Recognition of Handwritten Digits"), a fixed stratified split.
- `stdlib_text`: character-level text, the Python standard library's own
  `.py` sources (test folders excluded), split by file into train / validation.
- `synthetic_clicks`: a click-through data set for a DLRM-style recommender.
  It is **synthetic** (no real recommendation data can be had offline): clicks
  are drawn from a hidden factorisation model, so the best achievable AUC is
  known to be below 1 but not zero-noise.

Every loader is deterministic (no seed argument): all precisions and seeds see
the same data, the seeds vary only the initialisation and the batch order.
"""

import os
import sysconfig

import numpy as np

from tf_lowprec.cli import datasets

# Characters of the text task: printable ASCII, newline and tab; anything else
# (non-ASCII letters in a few docstrings) maps to one "other" id.
_CHARS = "\n\t" + "".join(chr(c) for c in range(32, 127))
CHAR_VOCAB = len(_CHARS) + 1
_SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


def mnist():
    """((x_train [4000, 28, 28, 1], y_train), (x_test [1000, ...], y_test))."""
    (x_train, y_train), (x_test, y_test) = datasets.load_mnist_5k()
    return (x_train[..., None], y_train), (x_test[..., None], y_test)


def digits():
    """scikit-learn's 8x8 digits: 1,397 train / 400 test (40 per class), pixels / 16."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 (optional dependency)

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32).reshape(-1, 64)
    y = data.target.astype(np.int64)
    test = np.concatenate([np.flatnonzero(y == d)[-40:] for d in range(10)])
    train = np.setdiff1d(np.arange(len(y)), test)
    train = train[np.random.default_rng(0).permutation(len(train))]
    return (x[train], y[train]), (x[test], y[test])


def _encode(text):
    table = np.full(128, len(_CHARS), np.int32)
    for i, c in enumerate(_CHARS):
        table[ord(c)] = i
    codes = np.frombuffer(text.encode("ascii", "replace"), np.uint8)
    return table[np.minimum(codes, 127)]


def stdlib_text(train_chars, val_chars):
    """Character ids of the standard library's sources: (train, validation).

    Files are walked in sorted order; every 10th file goes to validation, so the
    two sets share no file.  Returns int32 arrays of `train_chars` and
    `val_chars` characters (raises ValueError if the sources are too small).
    """
    root = sysconfig.get_paths()["stdlib"]
    parts = {"train": [], "val": []}
    sizes = {"train": 0, "val": 0}
    wanted = {"train": train_chars, "val": val_chars}
    index = 0
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS)
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            split = "val" if index % 10 == 9 else "train"
            index += 1
            if sizes[split] >= wanted[split]:
                continue
            with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
                text = f.read()
            parts[split].append(text)
            sizes[split] += len(text)
        if all(sizes[s] >= wanted[s] for s in sizes):
            break
    if any(sizes[s] < wanted[s] for s in sizes):
        raise ValueError(f"the standard library at {root} has too little text: {sizes}")
    return (_encode("".join(parts["train"]))[:train_chars],
            _encode("".join(parts["val"]))[:val_chars])


def char_windows(ids, count, length, seed):
    """`count` windows of `length + 1` characters at random offsets: (inputs, targets)."""
    starts = np.random.default_rng(seed).integers(0, len(ids) - length - 1, count)
    windows = np.stack([ids[s:s + length + 1] for s in starts])
    return windows[:, :-1], windows[:, 1:]


def synthetic_clicks(n_train, n_test, n_users=2000, n_items=1000, n_dense=8, rank=8):
    """Synthetic click logs: ({"sparse_ids": [n, 3], "dense_features": [n, n_dense]}, clicks).

    The hidden model: click ~ Bernoulli(sigmoid(<u_user, v_item> * 2 + c_category
    + w . dense - 1)), with users and items Zipf-distributed as in real logs.
    """
    rng = np.random.default_rng(1234)
    n_categories = 50
    user_factors = rng.standard_normal((n_users, rank)) / np.sqrt(rank)
    item_factors = rng.standard_normal((n_items, rank)) / np.sqrt(rank)
    item_category = rng.integers(0, n_categories, n_items)
    category_bias = rng.standard_normal(n_categories) * 0.5
    dense_weights = rng.standard_normal(n_dense) * 0.3
    # Popular ids spread over the tables (one fixed map for train and test).
    user_map, item_map = rng.permutation(n_users), rng.permutation(n_items)

    def draw(n):
        users = np.minimum(rng.zipf(1.3, n) - 1, n_users - 1)
        items = np.minimum(rng.zipf(1.2, n) - 1, n_items - 1)
        users, items = user_map[users], item_map[items]
        dense = rng.standard_normal((n, n_dense)).astype(np.float32)
        logits = (2.0 * np.sum(user_factors[users] * item_factors[items], axis=1)
                  + category_bias[item_category[items]] + dense @ dense_weights - 1.0)
        clicks = (rng.random(n) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        sparse = np.stack([users, items, item_category[items]], axis=1).astype(np.int32)
        return {"sparse_ids": sparse, "dense_features": dense}, clicks

    return draw(n_train), draw(n_test)


SPARSE_SIZES = (2000, 1000, 50)


def recall_sequences(n, length, symbols, seed):
    """`n` sequences of `length` one-hot random symbols; the label is the first symbol.

    Returns (x [n, length, symbols] float32, y [n] int64).  Only the first step
    carries the label: its error reaches the network through `length - 1`
    recurrent steps, shrinking at each.
    """
    ids = np.random.default_rng(seed).integers(0, symbols, (n, length))
    return np.eye(symbols, dtype=np.float32)[ids], ids[:, 0].astype(np.int64)
