"""`get_fewshot_lsr`, which big_vision configs call for their few-shot linear-probe evaluator (not run here: the mapping reports
`fewshot` as unsupported, to be dropped with `--config_ignore fewshot`)."""

import ml_collections as mlc


def get_fewshot_lsr(target_resolution: int = 224, resize_resolution: int = 256, runlocal: bool = False, **kw) -> mlc.ConfigDict:
    config = mlc.ConfigDict()
    config.type = "fewshot_lsr"
    config.representation_layer = "pre_logits"
    config.log_steps = 25_000
    config.pp_train = f"decode|resize({resize_resolution})|central_crop({target_resolution})|value_range(-1,1)"
    config.pp_eval = config.pp_train
    config.shots = (1, 5, 10, 25)
    config.update(kw)
    return config
