"""One architecture of every distinct option set of the zoo through the torch-free hub path (tests/hub_zoo.py),
in `make test`, at `hub_zoo.small` widths; test_hub_zoo_0..3.py sweep every architecture in `make test-zoo`."""
import hub_zoo

NAMES = hub_zoo.distinct()
results, test_loads_torch_free_with_timm_logits_and_convert_params = hub_zoo.tests(NAMES, zoo=False,
                                                                                 sizes=hub_zoo.small)


def test_every_family_and_option_set_is_swept():
    zoo = hub_zoo._zoo()['architectures']
    families = {a['family'] for a in zoo.values()}
    assert {zoo[n.split('.')[0]]['family'] for n in NAMES} == families
    assert len(NAMES) < len(zoo) / 2, len(NAMES)  # the cheap tier stays cheap
