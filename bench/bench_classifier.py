"""Accuracy of the shipped classifier on the 10 000 MNIST test images, and the time to classify
them (probabilities and features) on this machine's device.

    python bench/bench_classifier.py [--device cpu|cuda] [--threads N] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from grader.classifier import classify, evaluate_classifier, load_configured_classifier
from grader.config import load_config
from grader.data import load_mnist
from grader.models import pick_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model = load_configured_classifier(load_config(), device=device)
    images, labels = load_mnist(train=False)

    accuracy = evaluate_classifier(model, images, labels)   # also warms up kernels
    times = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        classify(model, images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device {device} ({name})")
    print(f"classify {len(images)} images (probs + features): {min(times):.2f} s (best of {args.repeats})")
    print(f"accuracy {accuracy:.4f} on {len(images)} test images")


if __name__ == "__main__":
    main()
