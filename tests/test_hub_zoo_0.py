"""Half 1 of 2 of the zoo through the torch-free hub path (tests/hub_zoo.py; two files so that the two
xdist workers share the work)."""
import pytest

import hub_zoo

pytestmark = pytest.mark.slow
NAMES = hub_zoo.representatives()[0::2]


@pytest.fixture(scope='module')
def results(tmp_path_factory):
    return hub_zoo.run(tmp_path_factory.mktemp('hf'), NAMES)


@pytest.mark.parametrize('name', NAMES)
def test_loads_torch_free_with_timm_logits_and_convert_config(results, name):
    hub_zoo.check(results, name)
