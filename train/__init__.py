"""Launch helpers: the TPU pod launcher (`python -m train.xla_dist`) and training recipes."""
