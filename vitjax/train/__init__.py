"""The training layer: everything `train.py` (and `vitjax train`) needs and `import vitjax` does not, and the
only part of vitjax that imports TensorFlow (its input pipelines, data/). Empty on purpose: train.py imports
`hostmem` to re-execute itself before jax or TensorFlow loads."""
