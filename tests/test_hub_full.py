"""One architecture per family at full size through the torch-free hub path (tests/hub_zoo.py): the
headline ViT-B/16 and the smallest well-known member of the other families."""
import hub_zoo

NAMES = ['vit_base_patch16_224.augreg2_in21k_ft_in1k', 'eva02_tiny_patch14_224.mim_in22k',
         'swin_tiny_patch4_window7_224.ms_in1k', 'naflexvit_base_patch16_gap.e300_s576_in1k']
results, test_loads_torch_free_with_timm_logits_and_convert_params = hub_zoo.tests(NAMES, full_size=True)
