"""The other half of vitjax/zoo.json's architectures against the installed timm (tests/test_zoo.py has the first):
a file of its own so that pytest-xdist's loadfile can run the halves side by side."""
import json

import pytest

from porting import zoo


@pytest.mark.slow
def test_architectures_match_timm_second_half():
    assert zoo.check(json.loads(zoo.TABLE.read_text()), sorted(zoo.architectures())[1::2]) == []
