"""Knowledge distillation: loss formulas, teacher/student flows via models.create_model, the DeiT distillation token, model EMA, XLA graphs.

The root conftest.py sets up the PJRT CPU device, the import order and the shared `digits_dir` fixture, as for tests/.
"""

import math
import os

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

import engine
import losses
import main
import models
from optim_factory import make_optimizer
from tasks.classification import ClassificationTask
from tasks.distillation import DistillationTask, get_teacher_dtype, make_teacher, setup_student
from utils import checkpoint as ckpt
from utils import import_order
from utils.device import make_runtime
from utils.ema import ModelEma

N_CLASSES = 10


def _batch(b: int = 8, size: int = 16, seed: int = 0, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {
        "image": torch.randn(b, 3, size, size, generator=g),
        "label": torch.randint(0, N_CLASSES, (b,), generator=g),
        "_mask": torch.ones(b, dtype=torch.bool),
    }
    return {k: v.to(device) for k, v in batch.items()}


def _save_weights(model: torch.nn.Module, fpath) -> str:
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(fpath))
    return str(fpath)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


# ---- the loss on hand-made logits ------------------------------------------------------------------

S_BC = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
T_BC = torch.tensor([[1.0, 1.5, -0.5], [2.0, -1.0, 0.5]])


def _kl_rows(s_bc: torch.Tensor, t_bc: torch.Tensor, temp: float) -> list[float]:
    """KL(softmax(t/T) || softmax(s/T)) per row, written out with math.exp/math.log."""
    rows = []
    for s_c, t_c in zip(s_bc.tolist(), t_bc.tolist(), strict=True):
        zs = sum(math.exp(v / temp) for v in s_c)
        zt = sum(math.exp(v / temp) for v in t_c)
        ps = [math.exp(v / temp) / zs for v in s_c]
        pt = [math.exp(v / temp) / zt for v in t_c]
        rows.append(sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps, strict=True)))
    return rows


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_soft_loss_is_batchmean_kl_times_t2_and_deit_divides_by_classes(temp):
    kl_b = _kl_rows(S_BC, T_BC, temp)
    expected = sum(kl_b) / len(kl_b) * temp**2
    got = losses.soft_distillation_loss(S_BC, T_BC, temp)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # The same as torch's kl_div with batchmean (fine on CPU; on XLA it warns, hence the manual form).
    ref = F.kl_div(F.log_softmax(S_BC / temp, -1), F.log_softmax(T_BC / temp, -1), reduction="batchmean", log_target=True) * temp**2
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    deit = losses.soft_distillation_loss(S_BC, T_BC, temp, scaling="deit")
    assert deit.item() == pytest.approx(expected / S_BC.shape[1], rel=1e-5), "DeiT's sum/numel is batchmean divided by the class count"
    assert losses.soft_distillation_loss(T_BC, T_BC, temp).item() == pytest.approx(0.0, abs=1e-6)


def test_hard_loss_is_ce_to_teacher_argmax():
    teacher_argmax = [1, 0]
    expected = -sum(math.log(math.exp(s_c[i]) / sum(math.exp(v) for v in s_c)) for s_c, i in zip(S_BC.tolist(), teacher_argmax, strict=True)) / 2
    assert losses.hard_distillation_loss(S_BC, T_BC).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_alpha_mixes_base_and_kd_with_endpoints(kind):
    label_b = torch.tensor([0, 2])
    base = F.cross_entropy(S_BC, label_b).item()
    kd = (losses.soft_distillation_loss(S_BC, T_BC, 2.0) if kind == "soft" else losses.hard_distillation_loss(S_BC, T_BC)).item()
    for alpha, expected in ((0.0, base), (1.0, kd), (0.3, 0.7 * base + 0.3 * kd)):
        loss, parts = losses.DistillationLoss(kind, alpha, temperature=2.0)(S_BC, T_BC, label_b)
        assert loss.item() == pytest.approx(expected, rel=1e-5), (alpha, kind)
        assert parts["loss_base"].item() == pytest.approx(base, rel=1e-5) and parts["loss_kd"].item() == pytest.approx(kd, rel=1e-5)


def test_base_term_takes_soft_targets_and_tuple_outputs_split_heads():
    soft_bc = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]])  # mixup-style targets
    base = -(soft_bc * F.log_softmax(S_BC, -1)).sum(-1).mean().item()
    loss, _ = losses.DistillationLoss("soft", 0.0)(S_BC, T_BC, soft_bc)
    assert loss.item() == pytest.approx(base, rel=1e-5)
    # (cls, dist): the class head takes the labels, the distillation head the teacher.
    dist_bc = S_BC.flip(0)
    loss, parts = losses.DistillationLoss("soft", 0.5, temperature=3.0)((S_BC, dist_bc), T_BC, soft_bc)
    kd = losses.soft_distillation_loss(dist_bc, T_BC, 3.0).item()
    assert parts["loss_kd"].item() == pytest.approx(kd, rel=1e-5)
    assert loss.item() == pytest.approx(0.5 * base + 0.5 * kd, rel=1e-5)


def test_bad_loss_settings_name_the_value():
    with pytest.raises(ValueError, match="unknown distillation type 'sfot'; did you mean 'soft'"):
        losses.DistillationLoss("sfot", 0.5)
    with pytest.raises(ValueError, match="alpha must be in"):
        losses.DistillationLoss("soft", 1.5)
    with pytest.raises(ValueError, match="unknown KD scaling 'batchmean'"):
        losses.DistillationLoss("soft", 0.5, scaling="batchmean")


# ---- models: the DeiT distillation token -----------------------------------------------------------


def test_distillation_token_model_has_two_heads_in_train_and_averages_them_in_eval():
    torch.manual_seed(0)
    student = models.create_model("deit_tiny_distilled_patch16_224", num_classes=N_CLASSES, img_size=32, depth=1)
    assert setup_student(student), "a DeiT distilled model has a distillation token"
    assert not setup_student(models.create_model("tiny_cnn", num_classes=N_CLASSES))
    x = _batch(size=32)["image"]
    student.train()
    cls_bc, dist_bc = student(x)
    assert cls_bc.shape == dist_bc.shape == (8, N_CLASSES)
    assert not torch.allclose(cls_bc, dist_bc), "two separate heads"
    student.eval()
    with torch.no_grad():
        out_bc = student(x)
    assert isinstance(out_bc, torch.Tensor) and out_bc.shape == (8, N_CLASSES)
    torch.testing.assert_close(out_bc, (cls_bc + dist_bc).detach() / 2)


# ---- teacher/student flows on CPU ------------------------------------------------------------------


def test_teacher_is_frozen_outside_the_optimizer_and_unchanged_after_steps(tmp_path):
    runtime = make_runtime("cpu")
    torch.manual_seed(0)
    teacher_fpath = _save_weights(models.create_model("tiny_cnn", num_classes=N_CLASSES), tmp_path / "teacher.safetensors")
    student = models.create_model("deit_tiny_distilled_patch16_224", num_classes=N_CLASSES, img_size=16, patch_size=8, depth=1)
    setup_student(student)
    optimizer = make_optimizer(student, "adamw", 1e-2, 0.05)
    teacher = make_teacher("tiny_cnn", teacher_fpath, N_CLASSES, runtime)
    task = DistillationTask(runtime, teacher, losses.DistillationLoss("hard", 0.5))
    ema = ModelEma(student, decay=0.5)
    teacher_before, student_before = _state(teacher), _state(student)
    nonfinite_t = torch.zeros(())
    for step in range(3):
        out, nonfinite_t = engine.train_step(student, task, optimizer, runtime, 1.0, _batch(size=16, seed=step), nonfinite_t, ema=ema)
    assert {"loss", "loss_base", "loss_kd", "grad_norm"} <= set(out)
    assert nonfinite_t.item() == 0
    for k, v in _state(teacher).items():
        assert torch.equal(v, teacher_before[k]), f"teacher {k} changed"
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}, "teacher parameters are in the optimizer"
    assert any(not torch.equal(v, student_before[k]) for k, v in _state(student).items()), "the student did not learn"
    # The EMA tracks the student, never the teacher, and is not the student.
    assert ema.module.state_dict().keys() == student.state_dict().keys()
    assert not any(torch.equal(v, student.state_dict()[k]) for k, v in ema.module.state_dict().items() if v.is_floating_point() and "head" in k)


def test_bf16_teacher_returns_fp32_logits_close_to_the_fp32_teacher(tmp_path):
    runtime = make_runtime("cpu")
    torch.manual_seed(0)
    fpath = _save_weights(models.create_model("tiny_cnn", num_classes=N_CLASSES), tmp_path / "teacher.safetensors")
    dtype = get_teacher_dtype("bf16", runtime)
    teacher = make_teacher("tiny_cnn", fpath, N_CLASSES, runtime, dtype=dtype)
    assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16}
    task = DistillationTask(runtime, teacher, losses.DistillationLoss("soft", 0.5), teacher_dtype=dtype)
    x = _batch()["image"]
    logits_bc = task.teacher_logits(x)
    assert logits_bc.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(logits_bc, make_teacher("tiny_cnn", fpath, N_CLASSES, runtime)(x), atol=0.05, rtol=0.05)
    with pytest.raises(ValueError, match="--teacher_dtype 'fp16' is not one of fp32, bf16"):
        get_teacher_dtype("fp16", runtime)


def test_ema_update_is_the_lerp_formula():
    torch.manual_seed(0)
    model = models.create_model("tiny_cnn", num_classes=N_CLASSES)
    ema = ModelEma(model, decay=0.9)
    before = _state(ema.module)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(_batch()["image"])  # moves the BN running stats and counts
    ema.update(model)
    for k, v in ema.module.state_dict().items():
        m = model.state_dict()[k]
        expected = m if not v.is_floating_point() else 0.9 * before[k] + 0.1 * m
        torch.testing.assert_close(v, expected, msg=k)
    with pytest.raises(ValueError, match="--model_ema_decay must be in"):
        ModelEma(model, decay=1.0)


def test_teacher_that_does_not_match_fails_at_startup_naming_keys(tmp_path):
    runtime = make_runtime("cpu")
    small_fpath = _save_weights(models.create_model("small_cnn", num_classes=N_CLASSES), tmp_path / "small.safetensors")
    with pytest.raises(
        ValueError,
        match=(
            r"teacher weights in .*small.safetensors do not match.*size mismatches "
            r"\['features.0.weight: file \(32, 3, 3, 3\) vs model \(16, 3, 3, 3\)'.*unexpected keys \[.*'features.12.weight'"
        ),
    ):
        make_teacher("tiny_cnn", small_fpath, N_CLASSES, runtime)
    five_fpath = _save_weights(models.create_model("tiny_cnn", num_classes=5), tmp_path / "five.safetensors")
    # safetensors stores keys sorted: head.bias comes first.
    with pytest.raises(
        ValueError,
        match=(
            r"size mismatches \['head.bias: file \(5,\) vs model \(10,\)', 'head.weight: file \(5, 32\) vs model \(10, 32\)'\], missing keys \[\], "
            r"unexpected keys \[\]"
        ),
    ):
        make_teacher("tiny_cnn", five_fpath, N_CLASSES, runtime)
    ours_fpath = tmp_path / "vit.pt"
    torch.save({"model": models.create_model("tiny_cnn", num_classes=N_CLASSES).state_dict(), "args": {"model": "tiny_cnn"}}, ours_fpath)
    with pytest.raises(ValueError, match="is a checkpoint of 'tiny_cnn' but --teacher_arch is 'small_cnn'; pass --teacher_arch tiny_cnn"):
        make_teacher("small_cnn", str(ours_fpath), N_CLASSES, runtime)
    with pytest.raises(ValueError, match=r"missing keys \['cls_token'"):
        make_teacher("test_vit", five_fpath, 5, runtime, img_size=16)


def test_cli_validates_kd_flags_at_startup(tmp_path, capsys):
    def error(*argv: str) -> str:
        with pytest.raises(SystemExit) as e:
            main.parse_args(list(argv))
        assert e.value.code == 2
        return capsys.readouterr().err

    assert "--kd needs --distillation_type soft or hard, got none" in error("--kd", "--teacher_arch", "tiny_cnn", "--teacher_path", "x.pt")
    assert "--kd needs --teacher_path" in error("--kd", "--distillation_type", "soft", "--teacher_arch", "tiny_cnn")
    assert "--teacher_path 'nope.pt' does not exist" in error("--kd", "--distillation_type", "soft", "--teacher_arch", "tiny_cnn", "--teacher_path", "nope.pt")
    assert "--distillation_type 'sfot' is not one of none, soft, hard; did you mean 'soft'?" in error("--distillation_type", "sfot")
    assert "--teacher_arch, --distillation_type given without --kd; add --kd" in error("--teacher_arch", "tiny_cnn", "--distillation_type", "soft")
    assert "--teacher_dtype 'fp16' is not one of fp32, bf16" in error("--teacher_dtype", "fp16")
    assert "--model_ema_eval needs --model_ema" in error("--model_ema_eval")
    cfg = tmp_path / "kd.yaml"
    cfg.write_text("kd: true\ndistillation_type: hard\nteacher_arch: tiny_cnn\n")
    assert "--kd needs --teacher_path" in error("--config", str(cfg))


# ---- end to end through main.py on the embedded digits data ------------------------------------------


def _kd_argv(digits_dir: str, out, teacher_fpath: str, *extra: str) -> list[str]:
    return [
        "--device", "cpu", "--tfds_data_dir", digits_dir, "--output_dir", str(out), "--model", "tiny_cnn", "--batch_size", "64", "--max_steps_per_epoch", "2",
        "--log_every", "1", "--tfds_num_parallel_calls", "1", "--no-tensorboard", "--kd", "--distillation_type", "soft", "--kd_temperature", "2",
        "--teacher_arch", "tiny_cnn", "--teacher_path", teacher_fpath, "--model_ema", "--model_ema_decay", "0.5", *extra,
    ]  # fmt: skip


def test_kd_run_checkpoints_only_the_student_and_resumes_its_ema(digits_dir, tmp_path):
    torch.manual_seed(1)
    teacher_fpath = _save_weights(models.create_model("tiny_cnn", num_classes=N_CLASSES), tmp_path / "teacher.safetensors")
    teacher_bytes = open(teacher_fpath, "rb").read()
    full = tmp_path / "full"
    summary = main.main(_kd_argv(digits_dir, full, teacher_fpath, "--epochs", "2", "--save_every_epochs", "1", "--keep_last", "5", "--model_ema_eval"))
    assert summary["steps"] == 4 and "ema_acc1" in summary
    state = ckpt.load_file(ckpt.list_checkpoints(str(full))[0][1])
    student_keys = set(models.create_model("tiny_cnn", num_classes=N_CLASSES).state_dict())
    assert set(state["model"]) == student_keys, "the checkpoint's model is the student, nothing of the teacher"
    assert set(state["model_ema"]) == student_keys
    assert not any("teacher" in k for k in state), sorted(state)
    assert open(teacher_fpath, "rb").read() == teacher_bytes

    # Stop after epoch 1 and resume: model and EMA end bit-identical to the uninterrupted run.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    os.link(ckpt.get_checkpoint_fpath(str(full), 2), ckpt.get_checkpoint_fpath(str(resumed), 2))
    main.main(
        _kd_argv(digits_dir, resumed, teacher_fpath, "--epochs", "2", "--save_every_epochs", "1", "--keep_last", "5", "--model_ema_eval", "--resume", "auto")
    )
    again = ckpt.load_file(ckpt.list_checkpoints(str(resumed))[0][1])
    for key in ("model", "model_ema"):
        for k, v in state[key].items():
            torch.testing.assert_close(again[key][k], v, rtol=0, atol=0, msg=f"{key}.{k}")


# ---- XLA: the teacher is part of the one compiled train step -----------------------------------------


def _compiles() -> int:
    import torch_xla.debug.metrics as met

    data = met.metric_data("CompileTime")
    return int(data[0]) if data else 0


@pytest.fixture(scope="module")
def xla_runtime():
    if not import_order.xla_installed():
        pytest.skip("torch_xla is not installed")
    return make_runtime("xla")


def _run_steps(runtime, task, ema_decay: float | None, n_steps: int) -> tuple[list[int], torch.nn.Module, ModelEma | None]:
    """Compiles seen after each of `n_steps` train steps of a fresh tiny_cnn student on the XLA device."""
    torch.manual_seed(0)
    student = models.create_model("tiny_cnn", num_classes=N_CLASSES).to(runtime.device)
    optimizer = make_optimizer(student, "adamw", 1e-2, 0.05)
    ema = ModelEma(student, ema_decay) if ema_decay else None
    step_fn = runtime.compile(lambda batch, nf: engine.train_step(student, task, optimizer, runtime, 1.0, batch, nf, ema=ema), name="train_step")
    nonfinite_t = torch.zeros((), device=runtime.device)
    # Flush pending set-up ops (initial values, moved weights) first: torch_xla.compile would run them as a small graph of its own.
    runtime.mark_step()
    start, counts = _compiles(), []
    for step in range(n_steps):
        out, nonfinite_t = step_fn(_batch(seed=step, device=runtime.device), nonfinite_t)
        runtime.mark_step()
        counts.append(_compiles() - start)
    assert torch.isfinite(out["loss"]).item() and nonfinite_t.item() == 0
    return counts, student, ema


@pytest.mark.xla
def test_xla_kd_step_compiles_like_the_plain_step_and_does_not_recompile(xla_runtime, tmp_path):
    import torch_xla.debug.metrics as met

    runtime = xla_runtime
    n_steps = 5
    met.clear_counters()  # fallback counters are per process: count only this test's steps
    plain, _, _ = _run_steps(runtime, ClassificationTask(runtime), None, n_steps)

    torch.manual_seed(1)
    teacher_fpath = _save_weights(models.create_model("tiny_cnn", num_classes=N_CLASSES), tmp_path / "teacher.safetensors")
    teacher = make_teacher("tiny_cnn", teacher_fpath, N_CLASSES, runtime)
    teacher_before = _state(teacher)
    task = DistillationTask(runtime, teacher, losses.DistillationLoss("soft", 0.5, temperature=2.0))
    kd, _, _ = _run_steps(runtime, task, None, n_steps)
    kd_ema, student, ema = _run_steps(runtime, task, 0.5, n_steps)

    assert plain[-1] == plain[1], f"plain step recompiled after warm-up: {plain}"
    assert kd == plain, f"the KD step compiles differently from the plain one (teacher in a separate graph?): kd {kd} vs plain {plain}"
    assert kd_ema == plain, f"the EMA update adds graphs: {kd_ema} vs plain {plain}"
    for k, v in _state(teacher).items():
        assert torch.equal(v, teacher_before[k]), f"teacher {k} changed on XLA"
    assert next(teacher.parameters()).device.type == "xla" and not teacher.training
    # aten::_local_scalar_dense is this test's own .item() host reads, not part of the step.
    fallbacks = [op for op in met.executed_fallback_ops() if op != "aten::_local_scalar_dense"]
    assert not fallbacks, f"ops in the train step fell back to the CPU: {fallbacks}"
    ema_w, student_w = ema.module.head.weight.cpu(), student.head.weight.cpu()
    assert not torch.equal(ema_w, student_w), "EMA weights did not lag the student"
