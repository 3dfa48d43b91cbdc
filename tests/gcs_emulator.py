"""gcp-storage-emulator as a test GCS, with the one header tensorstore needs that it leaves out.

Real GCS names an object's generation (`x-goog-generation`) when it is downloaded; the emulator does not, so
tensorstore reads generation 0 and orbax's OCDBT manifest update (a read, then a write conditioned on that
generation) fails with "Malformed StorageGeneration". Usage as the emulator's own:
`python tests/gcs_emulator.py start --port=P --in-memory --default-bucket=B`.
"""
import sys

from gcp_storage_emulator.handlers import objects


def _download(request, response, storage, *args, **kwargs):
    _original(request, response, storage, *args, **kwargs)
    try:
        obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
    except Exception:  # not found: the original handler answered 404
        return
    response['x-goog-generation'] = str(obj['generation'])
    response['x-goog-metageneration'] = str(obj.get('metageneration', 1))


_original, objects.download = objects.download, _download  # before the server module builds its routes

if __name__ == '__main__':
    from gcp_storage_emulator.__main__ import main
    main(sys.argv[1:])
