"""Half 1 of 2 of the zoo through the torch-free hub path (tests/hub_zoo.py)."""
import hub_zoo

NAMES, results, test_loads_torch_free_with_timm_logits_and_convert_config = hub_zoo.half(0)
