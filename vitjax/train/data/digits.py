"""`vitjax_digits`: scikit-learn's 1,797 handwritten digits as a tfds dataset, built offline.

The data ships inside the installed scikit-learn package, so `python train.py` trains with no network and
through the same tfds / tf.data path as any named dataset. Images are 8x8, scaled from 0..16 to 0..255 and
replicated to RGB. The test split is a fixed stratified 20% (360 images).
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds


class VitjaxDigits(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'sklearn.datasets.load_digits, stratified 80/20 split with random_state=0.'}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                'image': tfds.features.Image(shape=(8, 8, 3)),
                'label': tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
            }),
            supervised_keys=('image', 'label'),
            homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset',
        )

    def _split_generators(self, dl_manager):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        images, labels = load_digits(return_X_y=True)
        images = np.round(images.reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)
        images = np.repeat(images[..., None], 3, axis=-1)
        idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels,
                                               random_state=0)
        return {'train': self._generate_examples(images, labels, idx_train),
                'test': self._generate_examples(images, labels, idx_test)}

    def _generate_examples(self, images, labels, indices):
        for i in sorted(indices):
            yield int(i), {'image': images[i], 'label': int(labels[i])}
