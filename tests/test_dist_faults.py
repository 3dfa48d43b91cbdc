"""What `train.py --config.distributed=True` is given before any process waits for another: a coordinator
address jax cannot use, and the per-port lock on this host (vitjax/train/main.py). In-process, no jax.distributed
started; the processes that do wait are in tests/test_distributed.py."""
import os
import tempfile

import pytest

from vitjax.train import main
from vitjax.train.config import default_config


def _cluster(address):
    c = default_config()
    c.distributed, c.coordinator_address, c.num_processes, c.process_id = True, address, 2, 0
    return c


@pytest.mark.parametrize('address', ['localhost', 'localhost:abc', '127.0.0.1:99999', ':1234', '127.0.0.1:0'])
def test_a_coordinator_address_jax_cannot_use_is_one_error(address):
    """Before: 'localhost' died of jax's IndexError, '127.0.0.1:99999' and ':1234' waited the whole timeout."""
    with pytest.raises(ValueError, match=f'--config.coordinator_address={address!r} is not HOST:PORT'):
        main.init_distributed(_cluster(address))


def test_a_link_in_place_of_the_coordinator_lock_is_refused_and_its_target_untouched(tmp_path, monkeypatch):
    """/tmp is shared: a link named like the lock must not make process 0 truncate the file it points to."""
    mine = tmp_path / 'mine.txt'
    mine.write_text('my notes')
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    os.symlink(mine, tmp_path / 'vitjax-coordinator-23456.lock')
    with pytest.raises(ValueError, match=r'cannot take the lock of coordinator port 23456 on this host, .*'
                       r'vitjax-coordinator-23456.lock \(Too many levels of symbolic links\): remove it'):
        main.hold_coordinator_port('127.0.0.1:23456')
    assert mine.read_text() == 'my notes' and main._COORDINATOR_LOCK is None
