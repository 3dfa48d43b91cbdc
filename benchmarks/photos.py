"""`vitjax_photos`: the benchmark's image folder (benchmarks/input_scale.py) as a tfds dataset, the JPEG files
stored as they are (no re-encoding), so tfds and the folder pipeline read the same bytes."""
from __future__ import annotations

import os

import tensorflow_datasets as tfds


class VitjaxPhotos(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'benchmarks/input_scale.py build_folder(seed=0).'}
    MANUAL_DOWNLOAD_INSTRUCTIONS = 'python -m benchmarks.input_scale build ROOT writes ROOT/photos and this dataset.'

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
                'label': tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
            }),
            supervised_keys=('image', 'label'),
        )

    def _split_generators(self, dl_manager):
        return {'train': self._generate_examples(dl_manager.manual_dir)}

    def _generate_examples(self, folder):
        for label in sorted(os.listdir(folder)):
            for name in sorted(os.listdir(os.path.join(folder, label))):
                yield f'{label}/{name}', {'image': os.path.join(folder, label, name), 'label': int(label)}
