"""Part 4 of 4 of every zoo architecture through the torch-free hub path, at reduced depth (tests/hub_zoo.py)."""
import hub_zoo

NAMES = hub_zoo.part(3, hub_zoo.PARTS)
results, test_loads_torch_free_with_timm_logits_and_convert_params = hub_zoo.tests(NAMES)
