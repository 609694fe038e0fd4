"""big_vision config files as recipes: `main.py --config vit_i1k.py:variant=S/16` runs `get_config("variant=S/16")` and maps the
ConfigDict it returns onto our flags, field by field.

Every field is either mapped (`seed` -> --seed, `schedule.warmup_steps` -> --warmup_steps, `evals.NAME` -> a named eval set, ...),
noted as having no effect on what is trained (`prefetch_to_device`, `ckpt_steps` frequency details are mapped where a flag
exists), noted as approximated (one line each, e.g. Adam moments kept in fp32 where upstream stores them in bfloat16), or
unsupported. Unsupported fields stop the run with one line that lists them all, each with its reason; `--config_ignore FIELD ...`
drops fields on purpose (e.g. `fewshot`, or `evals.real` without the imagenet2012_real dataset). Classification configs are
covered: vit_i1k, vit_s16_i1k, bit_i1k, mlp_mixer_i1k and the distillation config proj/distill/bit_i1k.
"""

import importlib.util
import logging
import os
import sys

log = logging.getLogger(__name__)

VIT_WIDTHS = {"Ti": "tiny", "S": "small", "M": "medium", "B": "base", "L": "large", "H": "huge", "g": "giant"}
MIXER_WIDTHS = {"S": "s", "B": "b", "L": "l"}
NO_EFFECT = {  # fields that change how a run is executed or logged, never what it trains
    "prefetch_to_device": "device prefetch is the runtime's own",
    "keep_ckpt_steps": "checkpoints kept: --keep_last",
    "pp_modules": "every pp op is registered here",
    "input.prefetch": "host prefetch: --tfds_prefetch",
    "model.scan": "layer scan is a JAX compile detail",
    "model.remat_policy": "rematerialisation is a JAX memory detail",
    "mixup.fold_in": "mixup's random stream is ours",
    "wandb": "logging backend",
}
SUBTREES = {"fewshot": "few-shot linear probes are not run here"}  # refused as one block, not leaf by leaf
OPTIMIZERS = {"scale_by_adam": "adamw", "big_vision.momentum_hp": "momentum", "big_vision.scale_by_adafactor": "adafactorbv"}


class Unsupported(Exception):
    pass


def split_spec(spec: str) -> tuple[str, str | None]:
    """'path/to/config.py:arg' -> (path, arg); no ':' after the .py -> (path, None)."""
    head, sep, tail = spec.partition(".py:")
    return (head + ".py", tail) if sep else (spec, None)


def is_config_file(spec: str) -> bool:
    return split_spec(spec)[0].endswith(".py")


def load_config(spec: str):
    """The ConfigDict of `get_config(arg)` (or `get_config()` without `:arg`), as big_vision's config flag calls it."""
    fpath, arg = split_spec(spec)
    if not os.path.isfile(fpath):
        raise ValueError(f"--config {fpath!r} does not exist; pass a big_vision config file (.py) or a YAML recipe")
    module_name = "_big_vision_config_" + os.path.splitext(os.path.basename(fpath))[0]
    spec_ = importlib.util.spec_from_file_location(module_name, fpath)
    module = importlib.util.module_from_spec(spec_)
    sys.modules[module_name] = module
    try:
        spec_.loader.exec_module(module)
    except ImportError as e:
        raise ValueError(f"--config {fpath!r} imports {e.name!r}, which is not available here: {e}") from e
    if not hasattr(module, "get_config"):
        raise ValueError(f"--config {fpath!r} has no get_config(); a big_vision config file defines get_config(arg=None)")
    return module.get_config(arg) if arg is not None else module.get_config()


def drop_fields(cfg: dict, ignore: list[str]) -> None:
    """Delete each dotted FIELD of `--config_ignore` from the config mapping; a field it does not hold is an error."""
    import difflib

    for field in ignore:
        *parents, last = field.split(".")
        node = cfg
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            close = difflib.get_close_matches(field, list(flatten(cfg)), n=1)
            raise ValueError(f"--config_ignore {field!r}: the config has no such field" + (f"; did you mean {close[0]!r}?" if close else ""))
        del node[last]


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class Mapper:
    """Pops the fields it knows from the config mapping into flags; whatever is left over is unsupported."""

    def __init__(self, cfg: dict):
        self.cfg, self.flags, self.unsupported, self.notes, self.approx = cfg, {}, [], [], []

    def take(self, node: dict, key: str, flag: str | None = None, convert=lambda v: v):
        if key not in node:
            return None
        value = node.pop(key)
        if flag is not None:
            self.flags[flag] = convert(value)
        return value

    def refuse(self, field: str, value, reason: str) -> None:
        self.unsupported.append(f"{field}={value!r} ({reason})")

    def leftovers(self, node: dict, prefix: str) -> None:
        for key in [k for k in node if f"{prefix}{k}" in SUBTREES]:
            node.pop(key)
            self.unsupported.append(f"{prefix}{key} ({SUBTREES[prefix + key]})")
        for field, value in flatten(node, prefix).items():
            if field in NO_EFFECT:
                self.notes.append(f"{field} ({NO_EFFECT[field]})")
            else:
                self.refuse(field, value, "no counterpart here")


def map_top(m: Mapper) -> None:
    c = m.cfg
    m.take(c, "seed", "seed")
    epochs = m.take(c, "total_epochs")
    if epochs is not None:
        if float(epochs) != int(epochs):
            m.refuse("total_epochs", epochs, "--epochs counts whole epochs")
        m.flags["epochs"] = int(epochs)
    m.take(c, "num_classes", "num_classes")
    loss = m.take(c, "loss", "loss")
    if loss not in (None, "softmax_xent", "sigmoid_xent"):
        m.refuse("loss", loss, "losses here: softmax_xent, sigmoid_xent")
    m.take(c, "init_head_bias", "head_init_bias")
    m.take(c, "log_training_steps", "log_every")
    m.take(c, "ckpt_steps", "save_every_steps")
    m.take(c, "grad_clip_norm", "clip_grad")
    m.take(c, "lr", "lr")
    if m.take(c, "wd", "weight_decay") is not None:
        m.flags["wd_semantics"] = "big_vision"
    for field in ("total_steps", "total_examples"):
        if field in c:
            m.refuse(field, c.pop(field), "give the length as total_epochs")


def map_input(m: Mapper) -> None:
    node = m.cfg.pop("input", {})
    data = node.pop("data", {})
    if not isinstance(data, dict) or "name" not in data:
        m.refuse("input.data", data, "one TFDS dataset {name, split} is supported, not a mixture")
        data = {}
    m.flags["data_set"] = "tfds"
    m.take(data, "name", "tfds_name")
    m.take(data, "split", "tfds_train_split")
    m.take(data, "data_dir", "tfds_data_dir")
    m.leftovers(data, "input.data.")
    m.take(node, "batch_size", "batch_size")
    m.take(node, "shuffle_buffer_size", "tfds_shuffle_buffer")
    m.take(node, "pp", "big_vision_pp_train")
    m.take(node, "prefetch", "tfds_prefetch")
    cache_raw = m.take(node, "cache_raw")
    cache = m.take(node, "cache")
    if cache not in (None, "none", "raw_data"):
        m.refuse("input.cache", cache, "input caches here: none, raw_data")
    if cache_raw is not None or cache is not None:
        m.flags["tfds_cache_raw"] = bool(cache_raw) or cache == "raw_data"
    m.leftovers(node, "input.")


def model_name(m: Mapper, name: str, kw: dict, field: str) -> str | None:
    """The timm model of big_vision's `model_name` with its `model` options (popped from `kw`)."""
    import timm

    if name == "vit":
        width, _, patch = str(kw.pop("variant", "B/16")).partition("/")
        timm_name = f"vit_{VIT_WIDTHS.get(width, width)}_patch{patch}_224"
    elif name == "mlp_mixer":
        width, _, patch = str(kw.pop("variant", "B/16")).partition("/")
        timm_name = f"mixer_{MIXER_WIDTHS.get(width, width.lower())}{patch}_224"
    elif name in ("bit", "bit_paper"):
        depth, width = kw.pop("depth", 50), kw.pop("width", 1)
        if isinstance(depth, list | tuple) or float(width) != int(width):
            m.refuse(f"{field}.depth/width", (depth, width), "timm's BiT models have depths 50/101/152 and integer widths")
            return None
        timm_name = f"resnetv2_{depth}x{int(width)}_bit"
    else:
        m.refuse(f"{field}_name", name, "models here: vit, mlp_mixer, bit, bit_paper")
        return None
    if not timm.is_model(timm_name):
        m.refuse(f"{field}_name", name, f"timm has no {timm_name}")
        return None
    return timm_name


def map_vit_options(m: Mapper, kw: dict, field: str) -> dict:
    """big_vision ViT options -> timm VisionTransformer arguments; its initializers are timm's weight_init 'jax'."""
    out = {"weight_init": "jax"}
    pool = kw.pop("pool_type", "tok")
    pools = {"tok": {}, "gap": {"global_pool": "avg", "class_token": False, "fc_norm": False}, "map": {"global_pool": "map", "class_token": False}}
    if pool not in pools:
        m.refuse(f"{field}.pool_type", pool, f"pool types here: {', '.join(pools)}")
    out |= pools.get(pool, {})
    for key, ok, reason in (
        ("rep_size", (False, None, 0), "timm's ViT has no tanh pre-logits layer"),
        ("posemb", ("learn",), "timm's ViT learns its position embedding"),
        ("head_zeroinit", (True,), "timm's jax init zero-initialises the head"),
    ):
        if key in kw and kw[key] not in ok:
            m.refuse(f"{field}.{key}", kw[key], reason)
        kw.pop(key, None)
    if "dropout" in kw:
        m.flags["drop_rate"] = kw.pop("dropout")
    return out


def map_model(m: Mapper, prefix: str = "model", flag: str = "model") -> None:
    c = m.cfg
    name = c.pop(f"{prefix}_name", None)
    kw = dict(c.pop(prefix, {}) or {})
    if name is None:
        m.refuse(f"{prefix}_name", None, "the config names no model")
        return
    timm_name = model_name(m, name, kw, prefix)
    extra = map_vit_options(m, kw, prefix) if name == "vit" and flag == "model" else {}
    if "stoch_depth" in kw and flag == "model":
        m.flags["drop_path_rate"] = kw.pop("stoch_depth")
    if timm_name:
        m.flags[flag] = timm_name
    if extra:
        m.flags["model_kwargs"] = extra
    m.leftovers(kw, f"{prefix}.")


def map_optimizer(m: Mapper) -> None:
    c = m.cfg
    name = c.pop("optax_name", "scale_by_adam")
    kw = dict(c.pop("optax", {}) or {})
    if name not in OPTIMIZERS:
        m.refuse("optax_name", name, f"optimizers here: {', '.join(OPTIMIZERS)}")
        m.leftovers(kw, "optax.")
        return
    m.flags["opt"] = OPTIMIZERS[name]
    if name == "scale_by_adam":
        if "b1" in kw or "b2" in kw:
            m.flags["opt_betas"] = [float(kw.pop("b1", 0.9)), float(kw.pop("b2", 0.999))]
        m.take(kw, "eps", "opt_eps")
        if kw.pop("mu_dtype", None) not in (None, "float32"):
            m.approx.append("optax.mu_dtype (Adam's first moment is kept in float32, not bfloat16)")
    if name == "big_vision.momentum_hp":
        m.flags["momentum"] = float(kw.pop("beta", 0.9))
        if kw.pop("accumulator_dtype", None) not in (None, "float32"):
            m.approx.append("optax.accumulator_dtype (the momentum buffer is kept in float32)")
    m.leftovers(kw, "optax.")
    for field in ("lr_mults", "wd_mults"):
        if field in c:
            m.refuse(field, c.pop(field), "per-parameter multipliers are not mapped: --layer_decay, and no decay on norms/biases")


def map_schedule(m: Mapper) -> None:
    sched = m.cfg.pop("schedule", None)
    if sched is None:
        return
    if not isinstance(sched, dict):
        m.refuse("schedule", sched, "one schedule for all parameters is supported, not per-parameter schedules")
        return
    sched = dict(sched)
    decay = sched.pop("decay_type", "stair")
    if decay not in ("cosine", "linear", "polynomial"):
        m.refuse("schedule.decay_type", decay, "decays here: cosine, linear")
    if decay == "polynomial" and sched.get("power", 1) != 1:
        m.refuse("schedule.power", sched["power"], "only power 1 (linear)")
    sched.pop("power", None)
    m.flags |= {"sched": "cosine" if decay == "cosine" else "linear", "warmup_lr": 0.0, "min_lr": 0.0}
    end = sched.pop("end", sched.pop("linear_end", 0.0))
    if decay != "cosine":
        m.flags["min_lr"] = float(end) * float(m.cfg.get("lr", m.flags.get("lr", 1.0)))
    mult = sched.pop("mult", 1.0)
    if float(mult) != 1.0:
        m.refuse("schedule.mult", mult, "scale --lr instead")
    m.take(sched, "warmup_steps", "warmup_steps")
    m.take(sched, "warmup_epochs", "warmup_epochs")
    if "warmup_steps" not in m.flags and "warmup_epochs" not in m.flags:
        m.flags["warmup_steps"] = 0
    m.leftovers(sched, "schedule.")


def map_mixup(m: Mapper) -> None:
    mixup = m.cfg.pop("mixup", None)
    if not mixup:
        return
    mixup = dict(mixup)
    m.flags |= {"mixup": float(mixup.pop("p", 0.0)), "mixup_mode": "batch", "mixup_prob": 1.0}
    n = mixup.pop("n", 2)
    if n != 2:
        m.refuse("mixup.n", n, "mixup of two images only")
    m.leftovers(mixup, "mixup.")


def map_evals(m: Mapper) -> None:
    evals = m.cfg.pop("evals", None) or {}
    splits, datasets, pps = [], [], []
    for name, ev in evals.items():
        ev = dict(ev)
        kind = ev.pop("type", "classification")
        if kind != "classification":
            m.refuse(f"evals.{name}.type", kind, "evaluators here: classification")
            continue
        data = dict(ev.pop("data", {}))
        splits.append(f"{name}={data.pop('split', 'validation')}")
        if data.get("name", m.flags.get("tfds_name")) != m.flags.get("tfds_name"):
            datasets.append(f"{name}={data.pop('name')}")
        data.pop("name", None)
        if "pp_fn" in ev:
            pps.append(f"{name}={ev.pop('pp_fn')}")
        loss = ev.pop("loss_name", None)
        if loss not in (None, m.flags.get("loss", "softmax_xent")):
            m.refuse(f"evals.{name}.loss_name", loss, "the eval loss is the training --loss")
        for key in ("log_steps", "log_percent", "cache", "cache_final", "pred"):
            if key in ev and not (key == "pred" and ev[key] not in ("student_fwd", None)):
                m.notes.append(f"evals.{name}.{key} (every eval set runs every --eval_every_epochs, from the student)")
                ev.pop(key)
        m.leftovers(data, f"evals.{name}.data.")
        m.leftovers(ev, f"evals.{name}.")
    if splits:
        m.flags |= {"tfds_eval_splits": splits, "tfds_eval_datasets": datasets or None, "tfds_eval_pp": pps or None}


def map_distill(m: Mapper) -> None:
    c = m.cfg
    if "student_name" not in c:
        return
    map_model(m, "student", "model")
    teachers = c.pop("teachers", [])
    if len(teachers) != 1:
        m.refuse("teachers", teachers, "one teacher is supported")
    for t in teachers[:1]:
        map_model(m, t, "teacher_arch")
        init = c.pop(f"{t}_init", None)
        if init is not None:
            m.refuse(f"{t}_init", init, "big_vision checkpoint names do not load here: drop it and give --teacher_path (ours, timm or .safetensors)")
    distance = c.pop("distance", "kl")
    kw = dict(c.pop("distance_kw", {}) or {})
    if distance != "kl":
        m.refuse("distance", distance, "distances here: kl")
    m.flags |= {"kd": True, "distillation_type": "soft", "kd_alpha": 1.0, "kd_temperature": float(kw.pop("t", 1.0))}
    m.leftovers(kw, "distance_kw.")


def to_flags(cfg, ignore: list[str] | None = None, source: str = "the config") -> dict:
    """Our flag values for a big_vision ConfigDict (or mapping); a ValueError lists every unsupported field at once."""
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    drop_fields(d, list(ignore or []))
    m = Mapper(d)
    map_top(m)
    map_input(m)
    map_distill(m)
    if "model_name" in d or "model" in d:
        map_model(m)
    map_optimizer(m)
    map_schedule(m)
    map_mixup(m)
    map_evals(m)
    m.leftovers(d, "")
    if m.unsupported:
        raise ValueError(
            f"--config {source}: {len(m.unsupported)} field(s) have no counterpart here: {'; '.join(m.unsupported)}. "
            "Change them in the config, or drop them on purpose with --config_ignore FIELD ..."
        )
    if m.approx:
        log.warning("--config %s: approximated: %s", source, "; ".join(m.approx))
    if m.notes:
        log.info("--config %s: not mapped, no effect on training here: %s", source, "; ".join(m.notes))
    return m.flags


def load_recipe(spec: str, ignore: list[str] | None = None) -> dict:
    """`--config FILE.py[:ARG]` as a recipe: flag name -> value."""
    fpath, arg = split_spec(spec)
    return to_flags(load_config(spec), ignore, source=os.path.basename(fpath) + (f":{arg}" if arg is not None else ""))
