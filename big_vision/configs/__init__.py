"""What big_vision's config files import (`big_vision.configs.common`, `common_fewshot`, `proj.distill.common`), so such a file runs
here as it is through `main.py --config FILE.py[:ARG]` (`cli/big_vision_config.py` maps its ConfigDict onto our flags)."""
