"""Input pipelines (tensorflow-datasets + tf.data). TensorFlow is imported here only, never by the model code."""
import tensorflow as tf

try:  # TensorFlow only feeds the host pipeline; the accelerators belong to JAX.
    tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):
    pass

from vitjax.data import digits  # noqa: F401  (registers the `vitjax_digits` tfds builder)
from vitjax.data.input_pipeline import (DatasetInfo, create_eval_dataset, create_train_dataset,
                                        get_dataset_info)

__all__ = ['DatasetInfo', 'get_dataset_info', 'create_train_dataset', 'create_eval_dataset']
