"""The bundled data's loaders, where notebooks and benchmarks import them from.

>>> from tf_lowprec.cli import datasets
>>> datasets.load_mnist_5k()[0][0].shape
(4000, 28, 28)
"""

from tf_lowprec.datasets import load_mnist, load_mnist_5k

__all__ = ["load_mnist", "load_mnist_5k"]
