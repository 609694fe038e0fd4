"""Time google-research/big_vision's own train input pipeline (`big_vision.input_pipeline.training`) on a prepared TFDS dataset.

Run by `tools/bench_input_pipeline.py --big_vision_dir DIR` as a separate process, by path (not `-m`) with DIR first on PYTHONPATH, so that
`import big_vision` finds the user's checkout and not this project's package of the same name; nothing of this project is imported here. The checkout's
requirements (jax, flax, einops, overrides, ml_collections, tensorflow, tensorflow_datasets) must be importable. Prints one JSON line:
images/s and CPU ms per image over the timed batches.
"""

import argparse
import json
import os
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--big_vision_dir", required=True, help="a big_vision source checkout (the directory holding big_vision/)")
    p.add_argument("--data_dir", required=True, help="TFDS data dir holding the prepared dataset")
    p.add_argument("--name", required=True, help="TFDS dataset name")
    p.add_argument("--split", default="train", help="TFDS split")
    p.add_argument("--pp", required=True, help="the train pp string")
    p.add_argument("--batch_size", type=int, default=64, help="batch size")
    p.add_argument("--n_batches", type=int, default=60, help="timed batches")
    p.add_argument("--warmup_batches", type=int, default=5, help="untimed batches first")
    p.add_argument("--shuffle_buffer_size", type=int, default=1000, help="input.shuffle_buffer_size")
    args = p.parse_args()
    import big_vision

    if os.path.dirname(os.path.dirname(os.path.abspath(big_vision.__file__))) != os.path.abspath(args.big_vision_dir):
        sys.exit(f"error: big_vision is imported from {big_vision.__file__}, not from --big_vision_dir; put {args.big_vision_dir} first on PYTHONPATH")
    if not os.path.isfile(os.path.join(args.big_vision_dir, "big_vision", "input_pipeline.py")):
        sys.exit(f"error: --big_vision_dir {args.big_vision_dir!r} holds no big_vision/input_pipeline.py; pass the root of a big_vision checkout")
    try:
        import ml_collections

        from big_vision import input_pipeline
        from big_vision.pp import ops_general, ops_image  # noqa: F401  (register the ops, as big_vision's train.py does for config.pp_modules)
    except ImportError as e:
        sys.exit(f"error: big_vision's pipeline needs {e.name!r} (pip install jax flax einops overrides ml_collections): {e}")
    config = ml_collections.ConfigDict()
    config.data = {"name": args.name, "split": args.split, "data_dir": args.data_dir}
    config.batch_size, config.pp, config.shuffle_buffer_size, config.cache_raw = args.batch_size, args.pp, args.shuffle_buffer_size, False
    train_ds, _ = input_pipeline.training(config)
    it = iter(train_ds.as_numpy_iterator())
    for _ in range(args.warmup_batches):
        next(it)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.n_batches):
        batch = next(it)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = args.n_batches * args.batch_size
    assert batch["image"].shape[0] == args.batch_size
    print(json.dumps({"images_per_s": n / wall, "cpu_ms_per_image": 1e3 * cpu / n, "n_images": n}))


if __name__ == "__main__":
    main()
