"""Knowledge distillation: a frozen teacher's logits as a second target for the student.

The loss is `losses.DistillationLoss`; eval is plain classification of the student (a DeiT student
with a distillation token averages its two heads in eval mode, timm's forward does that).

The teacher lives on the task, never inside the student: it is not in the optimizer, the EMA or the
student's checkpoint, and `Trainer.state_dict()` (which saves the student) cannot see it. It sits on
the same device and runs inside `train_loss`, so on XLA its forward is part of the one compiled train
step (its weights are device data of that graph, not a second graph). Teacher and student see the
same input tensor (after mixup, if any); every model here is trained on `value_range(-1, 1)` inputs,
so no re-normalisation between them is needed.
"""

import dataclasses
import logging

import torch
from torch import nn

import models
from losses import DISTILLATION_TYPES, KD_SCALINGS, DistillationLoss
from tasks.classification import ClassificationTask
from utils import checkpoint as ckpt
from utils import fs, settings
from utils.device import Runtime

log = logging.getLogger("train")

TEACHER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """The `distillation` flags. A teacher flag without `--kd` (or `--kd` without a teacher) would silently train something else: both stop here."""

    kd: bool = False
    distillation_type: str = settings.setting("none", choices=DISTILLATION_TYPES)
    teacher_arch: str | None = None
    teacher_path: str | None = None
    teacher_img_size: int | None = settings.setting(None, range=settings.POSITIVE)
    teacher_dtype: str = settings.setting("fp32", choices=tuple(TEACHER_DTYPES))
    kd_alpha: float = settings.setting(0.5, range=settings.PROBABILITY)
    kd_temperature: float = settings.setting(1.0, range=settings.POSITIVE)
    kd_scaling: str = settings.setting("batchmean_t2", choices=KD_SCALINGS)

    def __post_init__(self):
        settings.check_fields(self)
        if not self.kd:
            given = [f"--{k}" for k in ("teacher_arch", "teacher_path", "teacher_img_size") if getattr(self, k) is not None]
            given += ["--distillation_type"] if self.distillation_type != "none" else []
            if given:
                raise ValueError(f"{', '.join(given)} given without --kd; add --kd to distil, or drop them")
            return
        if self.distillation_type == "none":
            raise ValueError("--kd needs --distillation_type soft or hard, got none")
        for flag in ("teacher_arch", "teacher_path"):
            if not getattr(self, flag):
                raise ValueError(f"--kd needs --{flag} (the teacher's model name and its trained weights)")
        if not fs.isfile(self.teacher_path):  # local or gs://
            raise ValueError(
                f"--teacher_path {self.teacher_path!r} does not exist; "
                "pass a checkpoint-*.pt from a teacher run, a timm-style state dict or a .safetensors file"
            )

    def make_loss(self, label_smoothing: float) -> DistillationLoss:
        return DistillationLoss(self.distillation_type, self.kd_alpha, self.kd_temperature, scaling=self.kd_scaling, label_smoothing=label_smoothing)


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode (BN running stats, no dropout) and no gradients, for good."""
    model.eval()
    model.requires_grad_(False)
    return model


def get_teacher_dtype(name: str, runtime: Runtime) -> torch.dtype:
    """`fp32` or `bf16`; bf16 needs a device that computes in it (TPU, recent GPUs, CPU eager)."""
    settings.check_choice("teacher_dtype", name, tuple(TEACHER_DTYPES))
    if name == "bf16" and runtime.kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("--teacher_dtype bf16 but this GPU has no bf16 support; use --teacher_dtype fp32")
    return TEACHER_DTYPES[name]


def make_teacher(arch: str, fpath: str, num_classes: int, runtime: Runtime, dtype: torch.dtype = torch.float32, img_size: int | None = None) -> nn.Module:
    """Build `arch` with `num_classes`, load `fpath` strictly, freeze it and move it to the device.

    `fpath` is one of our checkpoints (the model weights, not its EMA), a timm-style state dict or a
    `.safetensors` file. Our checkpoints store their config: a different model name there is an error,
    and its `img_size` is used unless `img_size` is given. Wrong architecture, class count or weights
    fail here, naming the missing, unexpected and mis-shaped keys.
    """
    state = ckpt.load_file(fpath, what="--teacher_path")
    saved_args = state.get("args") if isinstance(state.get("args"), dict) else {}
    saved_model = saved_args.get("model")
    if saved_model and saved_model != arch:
        raise ValueError(f"--teacher_path {fpath} is a checkpoint of {saved_model!r} but --teacher_arch is {arch!r}; pass --teacher_arch {saved_model}")
    if img_size is None:
        img_size = saved_args.get("img_size")
    flags = {"img_size": "--teacher_img_size"} if img_size is not None and not saved_args.get("img_size") else {}
    models.check_model_kwargs(arch, {"num_classes": num_classes, "img_size": img_size}, flags=flags, hint="--teacher_arch must be an image classifier")
    teacher = models.create_model(arch, num_classes=num_classes, img_size=img_size)
    ckpt.load_model_state(teacher, ckpt.get_model_state(state), source=fpath, what="teacher")
    teacher.to(device=runtime.device, dtype=dtype)
    n_params = sum(p.numel() for p in teacher.parameters())
    log.info("teacher: %s from %s, %.2fM parameters, %d classes, %s", arch, fpath, n_params / 1e6, num_classes, str(dtype).removeprefix("torch."))
    return freeze(teacher)


def setup_student(model: nn.Module) -> bool:
    """Turn on the distillation-token head of a DeiT-style student; returns whether it has one."""
    if not hasattr(model, "set_distilled_training"):
        return False
    model.set_distilled_training(True)
    return True


class DistillationTask(ClassificationTask):
    """Classification whose train loss also pulls the student towards a frozen teacher's logits."""

    def __init__(self, runtime: Runtime, teacher: nn.Module, criterion: DistillationLoss, teacher_dtype: torch.dtype = torch.float32):
        super().__init__(runtime, label_smoothing=criterion.label_smoothing)
        self.teacher = freeze(teacher)
        self.criterion = criterion
        self.teacher_dtype = teacher_dtype
        assert all(p.dtype == teacher_dtype for p in teacher.parameters()), f"teacher weights are not {teacher_dtype}"

    def teacher_logits(self, image_bchw: torch.Tensor) -> torch.Tensor:
        # The engine switches only the student between train and eval; the teacher must never leave eval mode.
        assert not self.teacher.training, "the teacher was put in train mode"
        with torch.no_grad():
            return self.teacher(image_bchw.to(self.teacher_dtype)).float()

    def train_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        teacher_logits_bc = self.teacher_logits(batch["image"])
        outputs = model(batch["image"])
        return self.criterion(outputs, teacher_logits_bc, self.targets(batch))


def make_distillation_task(config: DistillConfig, runtime: Runtime, model: nn.Module, num_classes: int, label_smoothing: float = 0.0) -> DistillationTask:
    """The task for `--kd`: teacher from `--teacher_arch`/`--teacher_path`, loss from the KD flags."""
    dtype = get_teacher_dtype(config.teacher_dtype, runtime)
    teacher = make_teacher(config.teacher_arch, config.teacher_path, num_classes, runtime, dtype=dtype, img_size=config.teacher_img_size)
    has_token = setup_student(runtime.unwrap(model))
    criterion = config.make_loss(label_smoothing)
    log.info(
        "distillation: %s, alpha %g, T %g, scaling %s, %s",
        config.distillation_type,
        config.kd_alpha,
        config.kd_temperature,
        config.kd_scaling,
        "class head -> labels, distillation token head -> teacher" if has_token else "one head for labels and teacher",
    )
    return DistillationTask(runtime, teacher, criterion, teacher_dtype=dtype)
