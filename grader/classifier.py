"""The grader's own MNIST classifier, which judges generated samples and interpolations.

Its class probabilities say whether a generated image looks like a digit (and which one); its
penultimate activations are the feature space of the Fréchet distance between generated and test
images. The shipped weights (reference/classifier.pt) are pinned by a SHA-256 in the config, so a
changed or truncated file is refused rather than silently moving every student's score.

Training follows the same recipe as grader/models.py: data in memory as tensors, batches drawn by
index, and augmentation applied to whole batches with one affine_grid/grid_sample call: the shipped
weights (10 epochs, 0.9957 test accuracy) took about 10 minutes on one CPU thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import atomic, metrics, paths
from .data import load_mnist
from .errors import ClassifierError
from .models import shuffled_batches

FEATURES = 128
N_CLASSES = 10

# Recipe of the shipped weights: `grader classifier train` with these defaults reproduces them.
DEFAULT_SEED = 0
DEFAULT_EPOCHS = 10
BATCH_SIZE = 128
MAX_LR = 3e-3
WEIGHT_DECAY = 1e-4
# CPU kernels split their sums by thread, so the weights are bit-identical only at the same thread
# count: training uses one (also the fastest on a small shared machine, about 1 min per epoch).
CPU_TRAIN_THREADS = 1

# Random affine augmentation: small enough that every digit keeps its class (no flips, 6 vs 9).
MAX_ROTATION_DEG = 10.0
MAX_SCALE_CHANGE = 0.1
MAX_SHIFT_PX = 2.0


def _conv_block(n_in: int, n_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(n_in, n_out, 3, padding=1, bias=False),   # bias is redundant before batch norm
        nn.BatchNorm2d(n_out),
        nn.ReLU(),
        nn.MaxPool2d(2),
    ]


class MnistClassifier(nn.Module):
    """Small CNN: three [conv3x3 -> batch norm -> ReLU -> 2x2 max pool] blocks of 32, 64 and 128
    channels (28 -> 14 -> 7 -> 3 pixels), then fc 128 -> fc 10; about 240k parameters.

    `features` is the 128-wide penultimate activation (after batch norm and ReLU, before dropout
    and the output layer), the space the Fréchet distance is computed in. Pooling after every
    convolution keeps it cheap: scoring runs it on thousands of generated images per submission.
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_block(1, 32),
            *_conv_block(32, 64),
            *_conv_block(64, 128),
            nn.Flatten(),
            nn.Linear(128 * 3 * 3, FEATURES, bias=False),
            nn.BatchNorm1d(FEATURES),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(FEATURES, N_CLASSES))

    @staticmethod
    def _as_images(x: torch.Tensor) -> torch.Tensor:
        """[B,1,28,28], [B,28,28] or flat [B,784] -> [B,1,28,28]."""
        if x.dim() < 2 or x[0].numel() != 28 * 28:
            raise ValueError(f"expected MNIST images [B,1,28,28] or [B,784], got shape {tuple(x.shape)}")
        return x.reshape(x.shape[0], 1, 28, 28)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self._as_images(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class ClassifierOutput:
    probs: torch.Tensor       # [N, 10], softmax of the logits
    features: torch.Tensor    # [N, FEATURES], penultimate activations


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _is_max_pool_2x2(layer: nn.Module | None) -> bool:
    def pair(value) -> tuple:
        return tuple(value) if isinstance(value, (tuple, list)) else (value, value)

    return (isinstance(layer, nn.MaxPool2d) and pair(layer.kernel_size) == (2, 2) and pair(layer.stride) == (2, 2)
            and pair(layer.padding) == (0, 0) and pair(layer.dilation) == (1, 1)
            and not layer.ceil_mode and not layer.return_indices)


def _pool_2x2(x: torch.Tensor, pick=torch.maximum) -> torch.Tensor:
    """nn.MaxPool2d(2) of [B, C, H, W] (an odd last row or column dropped, as it does), as two
    elementwise maxima (or minima, pick=torch.minimum): the same values, about 15x faster than
    CPU max_pool2d on these sizes."""
    x = x[:, :, : x.shape[2] // 2 * 2, : x.shape[3] // 2 * 2]
    rows = pick(x[:, :, 0::2], x[:, :, 1::2])
    return pick(rows[..., 0::2], rows[..., 1::2])


def _pool_before_batch_norm(norm: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """The 2x2 max pool of norm(x), computed as norm of a pool of x: in eval mode batch norm is
    x * a + b per channel with the sign of a the sign of its weight, and rounding keeps that
    monotone, so the max of norm(x) is norm of the max where a >= 0, of the min where a < 0."""
    rising = _pool_2x2(x)
    if norm.weight is not None and bool((norm.weight < 0).any()):
        falling = (norm.weight < 0).view(1, -1, 1, 1)
        rising = torch.where(falling, _pool_2x2(x, torch.minimum), rising)
    return norm(rising)


def _inference_features(model: MnistClassifier, x: torch.Tensor) -> torch.Tensor:
    """model.features(x) in eval mode, bit for bit (tested), in about half the CPU time: each
    [batch norm -> ReLU -> 2x2 max pool] runs as pool -> batch norm -> ReLU on a quarter of the
    values (max commutes with ReLU exactly, and with a channel's monotone affine batch norm, see
    _pool_before_batch_norm), the pool as elementwise maxima. Inference only: max_pool2d's
    gradient picks one of tied inputs where maximum's splits it, so training keeps the modules."""
    layers = list(model.body)
    x = model._as_images(x)
    index = 0
    while index < len(layers):
        block = layers[index : index + 3]
        if (len(block) == 3 and isinstance(block[0], nn.BatchNorm2d) and not block[0].training
                and isinstance(block[1], nn.ReLU) and _is_max_pool_2x2(block[2])):
            x, index = torch.relu(_pool_before_batch_norm(block[0], x)), index + 3
            continue
        layer = layers[index]
        x = _pool_2x2(x) if _is_max_pool_2x2(layer) else layer(x)
        index += 1
    return x


# Images per forward pass. On the CPU a batch of 250 keeps a convolution's activations in cache:
# 1.6x faster than 1000 at one thread (2026-12-03) and bit for bit the same outputs (tested).
CPU_BATCH, DEVICE_BATCH = 250, 1000


@torch.no_grad()
def classify(model: MnistClassifier, images: torch.Tensor, batch_size: int | None = None) -> ClassifierOutput:
    """Class probabilities and features of `images` (in [0,1]), in eval mode; results on the CPU."""
    model.eval()
    device = _model_device(model)
    if batch_size is None:
        batch_size = CPU_BATCH if device.type == "cpu" else DEVICE_BATCH
    probs, features = [], []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device, torch.float32)
        f = _inference_features(model, x)
        probs.append(torch.softmax(model.head(f), dim=1).cpu())
        features.append(f.cpu())
    if not probs:
        return ClassifierOutput(torch.empty(0, N_CLASSES), torch.empty(0, FEATURES))
    return ClassifierOutput(probs=torch.cat(probs), features=torch.cat(features))


def evaluate_classifier(
    model: MnistClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int | None = None
) -> float:
    """Share of `images` whose most probable class is the label."""
    probs = classify(model, images, batch_size).probs
    return (probs.argmax(dim=1) == labels.cpu()).float().mean().item()


# --- weights on disk ---------------------------------------------------------------------------


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_FIX_HINT = (
    "restore the shipped file (git checkout reference/classifier.pt), or retrain it with "
    "`grader classifier train` and put its new SHA-256 in the config's [classifier] sha256"
)


def load_classifier(weights: Path | str, sha256: str, device: torch.device | str = "cpu") -> MnistClassifier:
    """The classifier from `weights`, after checking the file's SHA-256 against `sha256`."""
    weights = Path(weights)
    if not weights.is_file():
        raise ClassifierError(f"{weights}: classifier weights not found; {_FIX_HINT}")
    actual = file_sha256(weights)
    if actual != sha256.lower():
        raise ClassifierError(
            f"{weights}: classifier weights do not match the config's hash "
            f"(expected sha256 {sha256}, file has {actual}); {_FIX_HINT}"
        )
    model = MnistClassifier()
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # unpickling or shape errors: the hash matched, so the config is stale
        raise ClassifierError(f"{weights}: not a state_dict of MnistClassifier ({exc})") from exc
    return model.to(device).eval()


def load_configured_classifier(config, device: torch.device | str = "cpu") -> MnistClassifier:
    """The classifier the assignment config names, hash-checked."""
    return load_classifier(config.path(config.classifier.weights), config.classifier.sha256, device)


def save_classifier(model: MnistClassifier, out_path: Path | str) -> None:
    """Write the model's weights atomically. Saved from a buffer, so the bytes (and the hash) do
    not depend on the file's name, which torch.save(model, path) would embed in the archive."""
    state = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic.write_bytes(Path(out_path), buffer.getvalue())


def evaluate_configured(config, data_dir: Path | None = None) -> float:
    """Accuracy of the configured (hash-checked) classifier on the 10 000 MNIST test images."""
    model = load_configured_classifier(config)
    images, labels = load_mnist(train=False, data_dir=data_dir)
    return evaluate_classifier(model, images, labels)


# --- the Fréchet target: feature statistics of real images, cached with the classifier ----------

# Bump when what a feature-cache file holds, or how it is computed, changes meaning.
FEATURE_CACHE_FORMAT = 1
_FEATURE_STATS: dict[str, metrics.FeatureStats] = {}   # this process's, by cache key


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a module's state_dict values in key order: the classifier's identity, whether
    it came from the hash-checked file or was built in memory (a test's)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def feature_cache_key(model: nn.Module, images: torch.Tensor) -> str:
    """Everything the statistics depend on: the weights, the images' bytes, and how they were
    computed (torch's version, the device kind and the thread count, which can change the last
    bits of a convolution's sums)."""
    data = hashlib.sha256(images.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    inputs = {"format": FEATURE_CACHE_FORMAT, "classifier": weights_digest(model), "images": data,
              "shape": list(images.shape), "dtype": str(images.dtype), "torch": torch.__version__,
              "device": _model_device(model).type, "threads": torch.get_num_threads()}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _read_stats(path: Path) -> metrics.FeatureStats | None:
    """The statistics in a cache file, or None when it is missing or damaged (then recomputed)."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            mean, cov, n = saved["mean"], saved["cov"], int(saved["n"])
    except (OSError, KeyError, ValueError, EOFError):
        return None
    if mean.shape != (FEATURES,) or cov.shape != (FEATURES, FEATURES) or n < 2:
        return None
    return metrics.FeatureStats(mean=mean, cov=cov, n=n)


def feature_stats_cached(model: MnistClassifier, images: torch.Tensor,
                         cache_dir: Path | str | None = None) -> metrics.FeatureStats:
    """Feature statistics of `images` under `model` (the test set's are every Fréchet distance's
    target): from this process's memo, else the per-user cache (<cache>/features/<key>.npz),
    else computed (10 000 images: seconds on one CPU thread) and cached, written atomically under
    a file lock so that concurrent workers compute a key once."""
    key = feature_cache_key(model, images)
    if key in _FEATURE_STATS:
        return _FEATURE_STATS[key]
    root = Path(cache_dir) if cache_dir is not None else paths.cache_dir() / "features"
    path = root / f"{key}.npz"

    def make() -> metrics.FeatureStats:
        stats = metrics.feature_stats(classify(model, images).features)
        buffer = io.BytesIO()
        np.savez(buffer, mean=stats.mean, cov=stats.cov, n=np.int64(stats.n))
        atomic.write_bytes(path, buffer.getvalue())
        return stats

    stats = paths.compute_once(root / f"{key}.lock", lambda _locked: _read_stats(path), make)
    _FEATURE_STATS[key] = stats
    return stats


# --- training ------------------------------------------------------------------------------------


def random_affine(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image rotated, scaled and shifted by a small random amount, the batch at once."""
    n = images.shape[0]

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * limit

    angle = uniform(math.radians(MAX_ROTATION_DEG))
    scale = 1 + uniform(MAX_SCALE_CHANGE)
    shift_x, shift_y = uniform(MAX_SHIFT_PX * 2 / 28), uniform(MAX_SHIFT_PX * 2 / 28)  # [-1,1] spans 28 px
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale  # theta maps output -> input
    theta = torch.stack(
        [torch.stack([cos, -sin, shift_x], dim=1), torch.stack([sin, cos, shift_y], dim=1)], dim=1
    ).to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@contextlib.contextmanager
def _reproducible(device: torch.device) -> Iterator[None]:
    """On the CPU: deterministic kernels and a fixed thread count while training; the caller's
    settings are restored after. (CUDA runs are seeded but not bit-reproducible.)"""
    if device.type != "cpu":
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(CPU_TRAIN_THREADS)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.set_num_threads(previous[1])


def fit_classifier(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    seed: int = DEFAULT_SEED,
    epochs: int = DEFAULT_EPOCHS,
    device: torch.device | str | None = None,
    log: Callable[[str], None] = print,
) -> MnistClassifier:
    """A freshly trained classifier; the same seed, data and device give the same weights."""
    device = torch.device(device or "cpu")
    torch.manual_seed(seed)                      # initial weights and dropout masks
    generator = torch.Generator().manual_seed(seed)   # batch order and augmentation
    model = MnistClassifier().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=MAX_LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = math.ceil(len(train_images) / BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=MAX_LR, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    train_images, train_labels = train_images.to(device), train_labels.to(device)
    with _reproducible(device):
        for epoch in range(epochs):
            model.train()
            started, loss_sum, correct = time.perf_counter(), 0.0, 0
            for index in shuffled_batches(len(train_images), BATCH_SIZE, generator, min_size=2):
                index = index.to(device)
                x = random_affine(train_images[index], generator)
                y = train_labels[index]
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                loss_sum += loss.item() * len(index)
                correct += (logits.argmax(dim=1) == y).sum().item()
            n = len(train_images)
            log(
                f"epoch {epoch + 1}/{epochs}: loss {loss_sum / n:.4f}, "
                f"train accuracy {correct / n:.4f}, {time.perf_counter() - started:.0f} s"
            )
    return model.eval()


def train_classifier(
    out_path: Path,
    seed: int = DEFAULT_SEED,
    epochs: int = DEFAULT_EPOCHS,
    device: torch.device | str | None = None,
    log: Callable[[str], None] = print,
    data_dir: Path | None = None,
) -> float:
    """Train on the 60 000 MNIST training images, save the state_dict to `out_path` atomically,
    and return the accuracy on the 10 000 test images."""
    train_images, train_labels = load_mnist(train=True, data_dir=data_dir)
    model = fit_classifier(train_images, train_labels, seed=seed, epochs=epochs, device=device, log=log)
    test_images, test_labels = load_mnist(train=False, data_dir=data_dir)
    accuracy = evaluate_classifier(model, test_images, test_labels)
    save_classifier(model, out_path)
    log(f"saved {out_path} (sha256 {file_sha256(out_path)}); test accuracy {accuracy:.4f}")
    return accuracy
