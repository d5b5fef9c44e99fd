"""Train the reference set and print per-model and total training seconds, the device, the
cache-hit load time, and the reference table.

    python bench/bench_reference.py [NAME=VALUE ...] [--preset quick] [--device cpu|cuda]
                                    [--threads N] [--cache DIR | --keep]

With no NAME=VALUE the parameters are the handout's defaults (EPOCHS=10 on all 60 000 training
images: long on a CPU); e.g. `EPOCHS=4 TRAIN_SUBSET=16384` (the quick preset) is shorter. It
trains into a fresh temporary cache unless --cache DIR (reuse) or --keep (the grader's cache).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from grader.config import load_config, parse_override
from grader.models import pick_device
from grader.reference import build_reference, format_reference_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="NAME=VALUE", help="notebook parameters")
    parser.add_argument("-p", dest="more", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--preset", default=None, help="a parameter preset of the config (quick, smoke)")
    parser.add_argument("--config", default=None, help="assignment config (default: the shipped one)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the config's limits.threads)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--cache", default=None, help="cache folder of reference entries to use")
    where.add_argument("--keep", action="store_true", help="use (and fill) the grader's own cache")
    args = parser.parse_args()
    config = load_config(args.config)
    torch.set_num_threads(args.threads or config.limits.threads)   # as `grader reference` does
    overrides = dict(parse_override(text) for text in [*args.overrides, *args.more])
    params = config.resolve_parameters(overrides, args.preset)
    if not overrides and not args.preset:
        print("parameters: the handout's defaults (EPOCHS=10, all training images); pass e.g. "
              "EPOCHS=4 TRAIN_SUBSET=16384 for a shorter run")
    device = pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device {device} ({name}); parameters {params}")

    with tempfile.TemporaryDirectory(prefix="bench-reference-") as tmp:
        cache = None if args.keep else (args.cache or tmp)
        started = time.perf_counter()
        ref = build_reference(config, params, device=device, cache_dir=cache)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        again = build_reference(config, params, device=device, cache_dir=cache, log=lambda m: None)
        hit_s = time.perf_counter() - started
    assert again.cache_hit

    print()
    for model, seconds in ref.train_seconds.items():
        print(f"train {model:<14} {seconds:8.1f} s")
    train_s = sum(ref.train_seconds.values())
    print(f"train total          {train_s:8.1f} s ({len(ref.train_seconds)} models, device {ref.device})")
    print(f"build total          {build_s:8.1f} s ({'cache hit' if ref.cache_hit else 'trained and measured'})")
    print(f"cache hit load       {hit_s:8.3f} s")
    print()
    print(format_reference_table(ref))


if __name__ == "__main__":
    main()
