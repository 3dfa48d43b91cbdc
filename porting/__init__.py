"""PyTorch -> Flax conversion with strict key coverage and a logit parity check (timm first)."""
