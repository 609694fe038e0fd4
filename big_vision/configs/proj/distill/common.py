"""`inits`, the teacher checkpoints big_vision's distillation configs name: here each name stands for itself, and the mapping reports a
teacher `*_init` as unsupported (pass our, timm or .safetensors weights with --teacher_path instead)."""


class _CheckpointNames(dict):
    def __missing__(self, name: str) -> str:
        return name


inits = _CheckpointNames()
