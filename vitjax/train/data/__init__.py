"""Input pipelines (tensorflow-datasets + tf.data). TensorFlow is imported here only, never by the model code."""
import sys

# TensorFlow's import loads all of Keras 3 (and scikit-learn through it), seconds of every train.py start, only to
# register Keras optimizers for SavedModel, which tf.data never uses. It skips that step when the import fails;
# `tf.keras` still loads on first use.
_SKIP = 'keras.src.optimizers'
_skipped = 'tensorflow' not in sys.modules and _SKIP not in sys.modules
if _skipped:
    sys.modules[_SKIP] = None  # an import of a None entry raises ImportError, before its parents load
try:
    import tensorflow as tf
finally:
    if _skipped:
        del sys.modules[_SKIP]

try:  # TensorFlow only feeds the host pipeline; the accelerators belong to JAX.
    tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):
    pass

from vitjax.train.data import digits  # noqa: F401  (registers the `vitjax_digits` tfds builder)
from vitjax.train.data.input_pipeline import (DatasetInfo, create_eval_dataset, create_train_dataset, eval_passes,
                                        get_dataset_info)

__all__ = ['DatasetInfo', 'get_dataset_info', 'create_train_dataset', 'create_eval_dataset', 'eval_passes']
