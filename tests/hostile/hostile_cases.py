"""The hostile corpus: notebooks (and non-notebooks) that attack or break the grader.

Each `Case` builds one submission into a folder, and says what the grader must make of it: the
status, a regular expression that the message the student sees must match (searched in
result.json's messages — `errors`, `cells[].error`, `checks[].message` and any other top-level
list of strings such as hints or warnings — and in the text of report.pdf), and for forgeries and
weak-check probes a score bound. The expectations are the behaviour the grader must have, not
what some version of it happens to do.

Most cases do not train: they take the sample `submissions/correct.ipynb`, replace its training
cells by freshly constructed models (seeded, so that every untrained case has the very same
weights as the untrained control) and add an attack cell. Cases that need values only known at
run time (a random token in file names, the corpus and output folders) get them from the
`BuildContext`.

Used by tests/hostile/test_hostile.py and bench/bench_hostile.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE = REPO_ROOT / "submissions" / "correct.ipynb"
SANDBOX_UIDS = range(200_000, 200_256)   # grader/sandbox.py's pool, for the stray-process check

# Regexes shared by several cases. Messages are matched with whitespace collapsed to one space.
# An untrained (or forged-but-measured-honestly) model: the reconstruction checks compare with the
# mean image; a model the grader refused says why.
UNTRAINED = r"(?i)(mean image|could not be measured|not (a|an) .{0,60}(module|autoencoder|vae)|state_dict|weights)"
OUTPUT_CAPPED = r"(?i)(truncat|output[^\n]{0,80}(cap|limit|too large|dropped|cut)|(cap|limit)[^\n]{0,80}output)"
DISK_FULL = r"(?i)(no space left|file too large|disk (quota|limit|space)|quota exceeded|errno 2[78])"
FILE_REFUSED = r"(?i)(no such file|read-only file system|permission denied|operation not permitted)"


@dataclass
class BuildContext:
    """What a case may need to know when it is built."""

    corpus: Path              # the folder being graded
    out: Path                 # the grader's --out
    token: str                # random, in every file name an attack tries to create
    canary_dir: Path          # a host folder (under /tmp) the kernel must not write to
    host_canaries: list[Path] = field(default_factory=list)  # files holding the secret, on the host
    cache_dir: Path = Path.home() / ".cache" / "grader"

    @property
    def daemon_marker(self) -> str:
        return f"hostile-daemon-{self.token}"

    def outside_targets(self) -> list[Path]:
        """Where write_outside tries to create a file (none may exist after the run)."""
        import sysconfig

        site = Path(sysconfig.get_paths()["purelib"])
        return [
            REPO_ROOT / "reference" / f"pwned-{self.token}.txt",
            REPO_ROOT / f"pwned-{self.token}.txt",
            site / f"pwned-{self.token}.pth",
            self.canary_dir / f"pwned-{self.token}.txt",
            self.out / f"pwned-{self.token}.txt",
            self.cache_dir / f"pwned-{self.token}.txt",
            Path.home() / f"pwned-{self.token}.txt",
        ]


@dataclass(frozen=True)
class Case:
    name: str                                   # the submission's stem (result.json's `submission`)
    group: str
    attack: str                                 # one line: what it does
    build: Callable[[BuildContext, Path], None]  # writes the submission at the path given
    status: str | tuple[str, ...]
    message: str                                # regex; see the module docstring
    filename: str | None = None                 # default NAME.ipynb
    max_score: float | None = None
    min_score: float | None = None
    forgery: bool = False                       # score <= the untrained control's + 0.5
    trains: bool = False
    cpu_only: bool = False                      # the expectation holds on a host without a GPU
    max_executed_bytes: int = 25_000_000        # OUT/<name>/executed.ipynb
    max_result_bytes: int = 3_000_000           # OUT/<name>/result.json

    @property
    def file(self) -> str:
        return self.filename or f"{self.name}.ipynb"

    @property
    def statuses(self) -> tuple[str, ...]:
        return (self.status,) if isinstance(self.status, str) else tuple(self.status)


# --- notebook helpers -------------------------------------------------------------------------


def _sample() -> dict:
    return json.loads(SAMPLE.read_text())


def _clear(nb: dict) -> dict:
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return nb


def _src(cell: dict) -> str:
    s = cell["source"]
    return s if isinstance(s, str) else "".join(s)


def _code(source: str, **metadata) -> dict:
    return {"cell_type": "code", "execution_count": None, "metadata": dict(metadata), "outputs": [],
            "source": textwrap.dedent(source).strip("\n")}


def _find(nb: dict, needle: str) -> int:
    hits = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and needle in _src(c)]
    if len(hits) != 1:
        raise ValueError(f"{SAMPLE.name}: expected one code cell containing {needle!r}, found {len(hits)}")
    return hits[0]


def _set(nb: dict, needle: str, source: str) -> None:
    nb["cells"][_find(nb, needle)]["source"] = textwrap.dedent(source).strip("\n")


def correct_nb() -> dict:
    return _clear(_sample())


def untrained_nb() -> dict:
    """The sample's code with every training cell replaced by a freshly constructed model (the same
    seed before each, so every untrained case holds identical weights), and no plots."""
    nb = correct_nb()
    cell = nb["cells"][_find(nb, "train_images, train_labels = as_tensors")]
    cell["source"] = _src(cell).replace('show_images(train_images[:32], "training images")', "")
    _set(nb, "ae, ae_history = train(beta=None)", "torch.manual_seed(SEED)\nae = AutoEncoder(NZ)\nae_history = []")
    _set(nb, 'show_samples(ae, "AE', "pass")
    _set(nb, "vae_beta0, vae_histories[0.0] = train(beta=0.0)",
         "vae_histories = {}\ntorch.manual_seed(SEED)\nvae_beta0 = VAE(NZ)")
    _set(nb, "vae_beta10, vae_histories[10.0] = train(beta=10.0)", "torch.manual_seed(SEED)\nvae_beta10 = VAE(NZ)")
    _set(nb, "vae_tuned, vae_histories[best_beta] = train(beta=best_beta)",
         "torch.manual_seed(SEED)\nvae_tuned = VAE(NZ)")
    cell = nb["cells"][_find(nb, "def show_interpolations")]
    cell["source"] = _src(cell).replace("show_interpolations(START_LABEL, END_LABEL)", "")
    _set(nb, "for start_label, end_label in", "pass")
    return nb


def with_cells(nb: dict, *sources: str) -> dict:
    nb["cells"].extend(_code(s) for s in sources)
    return nb


def write_nb(nb: dict) -> Callable[[BuildContext, Path], None]:
    def build(ctx: BuildContext, path: Path) -> None:
        path.write_text(json.dumps(nb, indent=1))
    return build


def untrained_plus(*sources: str) -> Callable[[BuildContext, Path], None]:
    """An untrained notebook with attack cells at the end (sources may use {token} etc.)."""
    def build(ctx: BuildContext, path: Path) -> None:
        fill = {"token": ctx.token, "marker": ctx.daemon_marker}
        cells = [s.replace("{token}", fill["token"]).replace("{marker}", fill["marker"]) for s in sources]
        path.write_text(json.dumps(with_cells(untrained_nb(), *cells), indent=1))
    return build


def raw(data: bytes) -> Callable[[BuildContext, Path], None]:
    def build(ctx: BuildContext, path: Path) -> None:
        path.write_bytes(data)
    return build


# --- attack code sent to the kernel -----------------------------------------------------------

# What a perfect student's probe would hand back, in the probe's (v1) array layout, computed from
# the grader's own input file in the working directory: perfect reconstructions, real MNIST
# images as samples, interpolation paths made of real digits, exact unit outputs.
PERFECT_ARRAYS = '''
def _hostile_perfect_arrays(workdir="."):
    import os
    import numpy as _np
    data = dict(_np.load(os.path.join(workdir, "probe_inputs.npz")))
    x = data["test_x"]
    n, nz = data["prior_z"].shape
    real = train_images.numpy()
    real = _np.concatenate([real] * (n // len(real) + 1))[:n]
    rng = _np.random.default_rng(0)
    mean = _np.repeat(x.mean(0, keepdims=True), len(x), 0)
    out = {}
    for role in ("ae", "vae_beta0", "vae_beta10", "vae_tuned"):
        out[role + ".recon"] = (mean if role == "vae_beta10" else x).astype(_np.float32)
        scale = {"vae_beta0": 30.0, "vae_beta10": 0.0}.get(role, 1.0)
        out[role + ".z"] = (rng.standard_normal((len(x), nz)) * scale).astype(_np.float32)
        if role != "ae":
            ls = {"vae_beta0": -6.0, "vae_beta10": 0.0}.get(role, -1.0)
            out[role + ".log_sigma"] = _np.full((len(x), nz), ls, _np.float32)
        out[role + ".samples"] = real.reshape(n, 1, 28, 28).astype(_np.float32)
        a, b, s = data["interp_start"], data["interp_end"], len(data["interp_alpha"])
        path = _np.stack([a if k < s / 2 else b for k in range(s)], 1)
        out[role + ".interp"] = path.reshape(len(a), s, -1).astype(_np.float32)
    mu, ls = data["kl_mu"], data["kl_log_sigma"]
    out["kl_unit"] = (0.5 * (mu**2 + _np.exp(2 * ls) - 1 - 2 * ls).sum(1)).astype(_np.float32)
    rmu, rls = data["reparam_mu"], data["reparam_log_sigma"]
    out["reparam_unit"] = (rmu + _np.exp(rls) * rng.standard_normal(rmu.shape)).astype(_np.float32)
    return out
'''

FORGED_SCORES = PERFECT_ARRAYS + '''
import hashlib
import json
import os
import numpy

_real_savez, _real_sha256, _real_dump = numpy.savez, hashlib.sha256, json.dump


class _AlwaysEqual(str):
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = str.__hash__


class _ForgedSha256:
    """Every digest compares equal to whatever it is checked against."""

    def __init__(self, *args, **kwargs):
        self._h = _real_sha256(*args, **kwargs)

    def update(self, data):
        self._h.update(data)

    def digest(self):
        return self._h.digest()

    def hexdigest(self):
        return _AlwaysEqual(self._h.hexdigest())


def _forged_savez(file, *args, **arrays):
    workdir = os.path.dirname(os.path.abspath(str(file)))
    if os.path.exists(os.path.join(workdir, "probe_inputs.npz")):
        try:
            arrays = {**arrays, **_hostile_perfect_arrays(workdir)}
        except Exception as exc:
            print("forgery failed:", exc)
    return _real_savez(file, *args, **arrays)


def _forged_dump(obj, fp, *args, **kwargs):
    if isinstance(obj, dict):
        obj = dict(obj)
        if isinstance(obj.get("values"), dict):
            obj["values"] = {**obj["values"], "best_beta": 1.0}
            obj["errors"] = {}
        if "best_beta" in obj:
            obj["best_beta"] = 1.0
    return _real_dump(obj, fp, *args, **kwargs)


numpy.savez, hashlib.sha256, json.dump = _forged_savez, _ForgedSha256, _forged_dump
'''

INPUT_TRANSFORMER = PERFECT_ARRAYS + '''
def _hostile_after_every_cell():
    import json
    import os
    import numpy as _np
    if os.path.exists("probe_inputs.npz") and any(os.path.exists(f) for f in ("probe.npz", "probe.json", "weights.npz")):
        _np.savez("probe.npz", **_hostile_perfect_arrays("."))
        with open("probe.json", "w") as handle:
            json.dump({"errors": {}, "values": {"best_beta": 1.0}}, handle)


def _hostile_rewrite(lines):
    # every later cell, the grader's included: its own code, then the forgery
    return list(lines) + ["\\n", "_hostile_after_every_cell()\\n"]


get_ipython().input_transformers_cleanup.append(_hostile_rewrite)
'''

LOOKUP_MODELS = '''
class _Lookup:
    """encode remembers every image under the code it returns; decode hands it back."""

    def _remember(self, x):
        table = self.__dict__.setdefault("_table", [])
        z = torch.zeros(len(x), self.nz)
        for i, image in enumerate(x):
            table.append(image.detach().reshape(1, 28, 28).clone())
            z[i, 0] = len(table) - 1
        return z

    def decode(self, z):
        table = self.__dict__.get("_table") or [torch.zeros(1, 28, 28)]
        first = z[:, 0]
        exact = (first - first.round()).abs() < 1e-4
        index = torch.where(exact, first.round(), (first.abs() * 7919).floor()).long() % len(table)
        return torch.stack([table[i] for i in index.tolist()])


class LookupAE(_Lookup, AutoEncoder):
    def encode(self, x):
        return self._remember(x)


class LookupVAE(_Lookup, VAE):
    def encode(self, x):
        z = self._remember(x)
        return z, torch.full_like(z, -8.0)


torch.manual_seed(SEED)
ae = LookupAE(NZ)
torch.manual_seed(SEED)
vae_beta0 = LookupVAE(NZ)
torch.manual_seed(SEED)
vae_tuned = LookupVAE(NZ)
'''

CLASS_LIAR = LOOKUP_MODELS + '''
class _Impostor:
    """Not a module at all, but isinstance() believes it is whatever class it claims."""

    def __init__(self, inner, claimed):
        self.__dict__["_inner"], self.__dict__["_claimed"] = inner, claimed

    @property
    def __class__(self):
        return self.__dict__["_claimed"]

    def __getattr__(self, name):
        return getattr(self.__dict__["_inner"], name)

    def state_dict(self, *args, **kwargs):
        return {"forged": torch.ones(1)}


ae = _Impostor(ae, AutoEncoder)
vae_beta0 = _Impostor(vae_beta0, VAE)
vae_tuned = _Impostor(vae_tuned, VAE)
assert isinstance(ae, AutoEncoder) and isinstance(vae_tuned, VAE) and isinstance(vae_tuned, nn.Module)
'''

STORED_IMAGES = '''
class StoredImagesVAE(VAE):
    """decode ignores z: it hands out training images, one after the other."""

    def decode(self, z):
        start = self.__dict__.get("_next", 0)
        index = (torch.arange(len(z)) + start) % len(train_images)
        self.__dict__["_next"] = start + len(z)
        return train_images[index].reshape(-1, 1, 28, 28).clone()


torch.manual_seed(SEED)
vae_tuned = StoredImagesVAE(NZ)
'''

KL_SAVEZ_FIX = '''
import numpy

_real_savez = numpy.savez


def _savez_fixing_kl(file, *args, **arrays):
    for key in list(arrays):
        if "kl" in key.lower():
            arrays[key] = -arrays[key]
    return _real_savez(file, *args, **arrays)


numpy.savez = _savez_fixing_kl
'''

STATE_DICT_PATCHED = '''
ae.state_dict = lambda *args, **kwargs: {"encoder.1.weight": torch.zeros(3, 3), "../../../../tmp/evil": torch.ones(1)}
vae_beta0.state_dict = lambda *args, **kwargs: "not a state dict at all"


def _refuse(*args, **kwargs):
    raise RuntimeError("this state_dict is not for you")


vae_beta10.state_dict = _refuse
vae_tuned.state_dict = lambda *args, **kwargs: {name: "x" * 100 for name in VAE(NZ).state_dict()}
'''

STATE_DICT_GLOBAL = '''
_real_state_dict = torch.nn.Module.state_dict


def _nan_state_dict(self, *args, **kwargs):
    sd = _real_state_dict(self, *args, **kwargs)
    return type(sd)((k, torch.full_like(v, float("nan")) if torch.is_tensor(v) and v.is_floating_point() else v)
                    for k, v in sd.items())


torch.nn.Module.state_dict = _nan_state_dict
'''

DAEMON = '''
import os
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/bin/sh", ["/bin/sh", "-c", "while :; do sleep 1; done", "{marker}"])
    os._exit(0)
os.waitpid(pid, 0)
print("a daemon outlives this notebook")
'''

FORK_BOMB = '''
import os, time
root = os.getpid()
while True:
    try:
        os.fork()           # every process, children included, keeps forking
    except OSError as exc:
        if os.getpid() == root:
            raise RuntimeError(f"fork bomb stopped: {exc}") from exc
        while True:         # the children hold their process slot
            time.sleep(60)
'''

THREAD_BOMB = '''
import threading, time
threads = []
while True:
    t = threading.Thread(target=time.sleep, args=(3600,), daemon=True)
    t.start()
    threads.append(t)
'''

MEMORY = '''
import numpy as np
hog = []
for _ in range(200):                     # 20 GB, every page touched
    hog.append(np.ones(100 * 2**20 // 8))
print(len(hog))
'''

DISK_WRITE = '''
import os
chunk = b"\\1" * (16 << 20)
with open("fill.bin", "wb") as f:       # 1 GiB for real
    for _ in range(64):
        f.write(chunk)
    f.flush()
    os.fsync(f.fileno())
'''

DISK_FALLOCATE = '''
import os
fd = os.open("alloc.bin", os.O_WRONLY | os.O_CREAT, 0o600)
os.posix_fallocate(fd, 0, 2 << 30)       # 2 GiB reserved
os.close(fd)
'''

DEEP_TREE = '''
import os
home = os.getcwd()
for _ in range(1500):                    # 151 kB of path: more than PATH_MAX
    os.mkdir("d" * 100)
    os.chdir("d" * 100)
open("bottom.txt", "w").write("deep")
os.chdir(home)
'''

SPARSE = '''
for name in ("weights.npz", "probe.json", "executed.ipynb", "probe.npz", "result.json"):
    try:
        with open(name, "wb") as f:
            f.truncate(1 << 30)          # 1 GiB, sparse
    except OSError as exc:
        print(name, exc)
'''

ZIP_BOMB = '''
import io, os, shutil, zipfile
import numpy as np


def _bomb(path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 29,)})
    zero = bytes(16 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as z:
        with z.open("ae.encoder.1.weight.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            for _ in range(128):         # 2 GiB of zeros
                member.write(zero)


_bomb("bomb.npz")
print(os.path.getsize("bomb.npz"), "bytes on disk")
for name in ("weights.npz", "probe.npz"):
    shutil.copy("bomb.npz", name)


def _hostile_rebomb():
    import os, shutil
    if os.path.exists("bomb.npz"):
        for name in ("weights.npz", "probe.npz"):
            shutil.copy("bomb.npz", name)


get_ipython().input_transformers_cleanup.append(lambda lines: list(lines) + ["\\n", "_hostile_rebomb()\\n"])
'''

STDOUT_FLOOD = '''
line = "x" * ((1 << 20) - 1) + "\\n"
for _ in range(100):                     # 100 MB
    print(line, end="")
'''

BIG_PNG = '''
import base64, os
from IPython.display import display
png = b"\\x89PNG\\r\\n\\x1a\\n" + os.urandom(50 << 20)   # 50 MB
display({"image/png": base64.b64encode(png).decode(), "text/plain": "a big image"}, raw=True)
'''

UPDATE_DISPLAY = '''
from IPython.display import display
handle = display({"text/plain": "small"}, raw=True, display_id=True)
payload = "y" * (20 << 20)               # 20 MB per update
for i in range(12):
    handle.update({"text/plain": payload + str(i)}, raw=True)
'''

WIDGET_STATE = '''
try:
    from comm import create_comm
except ImportError:
    from ipykernel.comm import Comm as create_comm
state = {"_model_module": "@jupyter-widgets/controls", "_model_module_version": "2.0.0",
         "_model_name": "HTMLModel", "_view_module": "@jupyter-widgets/controls", "value": "z" * (8 << 20)}
widgets = [create_comm(target_name="jupyter.widget", data={"state": dict(state), "buffer_paths": []},
                       metadata={"version": "2.1.0"}) for _ in range(4)]   # 32 MB of widget state
for w in widgets:
    w.send({"method": "update", "state": {"value": "w" * (8 << 20)}, "buffer_paths": []})
'''

WIDGET_NO_MODULE = '''
try:
    from comm import create_comm
except ImportError:
    from ipykernel.comm import Comm as create_comm
w = create_comm(target_name="jupyter.widget", data={"state": {"_model_name": "MysteryModel", "value": 1},
                                                     "buffer_paths": []}, metadata={"version": "2.1.0"})
'''

HUGE_HISTORY = '''
ae_history = [{"epoch": i + 1, "rec": 50.0 - i * 1e-4, "kl": 0.0} for i in range(100_000)]
vae_histories = {b: [{"epoch": i + 1, "rec": 40.0, "kl": 5.0} for i in range(100_000)] for b in (0.0, 10.0, 1.0)}
'''

NETWORK = '''
import urllib.request
print(urllib.request.urlopen("https://pypi.org/simple/torch/", timeout=10).read()[:200])
'''

SOCKET = '''
import socket
s = socket.create_connection(("151.101.0.223", 443), timeout=10)   # pypi.org, no DNS needed
print("connected", s)
'''


def _read_host_files(ctx: BuildContext, path: Path) -> None:
    targets = [str(p) for p in ctx.host_canaries]
    source = f'''
import os
for target in {targets!r} + [{str(ctx.cache_dir)!r}, os.path.expanduser("~/.cache/grader")]:
    if os.path.isdir(target):
        for root, dirs, files in os.walk(target):
            print(root, files)
    else:
        print(open(target).read())
'''
    path.write_text(json.dumps(with_cells(untrained_nb(), source), indent=1))


def _env_dump(ctx: BuildContext, path: Path) -> None:
    source = '''
import os
print(dict(os.environ))
for pid in ["1", "self", str(os.getppid())]:
    try:
        print(pid, open(f"/proc/{pid}/environ", "rb").read())
    except OSError as exc:
        print(pid, exc)
'''
    path.write_text(json.dumps(with_cells(untrained_nb(), source), indent=1))


def _write_outside(ctx: BuildContext, path: Path) -> None:
    cells = [f"open({str(t)!r}, 'w').write('pwned')" for t in ctx.outside_targets()]
    cells.append(f"open({str(path)!r}, 'w').write('{{}}')   # the submission itself")
    cells.append(f"import os\nos.makedirs({str(ctx.canary_dir / ('made-' + ctx.token))!r})")
    path.write_text(json.dumps(with_cells(untrained_nb(), *cells), indent=1))


def _cuda_nb() -> dict:
    nb = untrained_nb()
    cell = nb["cells"][_find(nb, 'device = torch.device("cuda" if torch.cuda.is_available() else "cpu")')]
    cell["source"] = _src(cell).replace('torch.device("cuda" if torch.cuda.is_available() else "cpu")',
                                        'torch.device("cuda")')
    for needle, name, cls in (("ae = AutoEncoder(NZ)", "ae", "AutoEncoder"), ("vae_beta0 = VAE(NZ)", "vae_beta0", "VAE"),
                              ("vae_beta10 = VAE(NZ)", "vae_beta10", "VAE"), ("vae_tuned = VAE(NZ)", "vae_tuned", "VAE")):
        c = nb["cells"][_find(nb, needle)]
        c["source"] = _src(c).replace(f"{name} = {cls}(NZ)", f"{name} = {cls}(NZ).cuda()")
    nb["cells"].append(_code("train_images = train_images.to(device)"))
    return nb


def _colab_nb() -> dict:
    nb = untrained_nb()
    nb["cells"].insert(1, _code("from google.colab import drive\ndrive.mount('/content/drive')"))
    nb["cells"].insert(2, _code("!pip install -q torchvision\n%cd /content/drive/MyDrive/assignment"))
    return nb


def _untagged_nb() -> dict:
    nb = untrained_nb()
    for cell in nb["cells"]:
        tags = cell.get("metadata", {}).get("tags")
        if tags and "parameters" in tags:
            cell["metadata"]["tags"] = [t for t in tags if t != "parameters"] or []
            if not cell["metadata"]["tags"]:
                del cell["metadata"]["tags"]
    return nb


def _source_int_nb() -> dict:
    nb = untrained_nb()
    nb["cells"][_find(nb, "def reconstruction_loss")]["source"] = 5
    return nb


def _list_metadata_nb() -> dict:
    nb = untrained_nb()
    nb["cells"][_find(nb, "def kl_divergence")]["metadata"] = ["parameters", "hidden"]
    return nb


def _trained_128_nb(epochs_factor: int | None = None) -> dict:
    nb = correct_nb()
    data = _find(nb, "train_images, train_labels = as_tensors")
    extra = "train_images, train_labels = train_images[:128], train_labels[:128]   # only 128 images"
    if epochs_factor:
        extra += f"\nEPOCHS = {epochs_factor} * EPOCHS   # and many passes over them"
    nb["cells"].insert(data + 1, _code(extra))
    return nb


def _symlink_to(target: str) -> Callable[[BuildContext, Path], None]:
    def build(ctx: BuildContext, path: Path) -> None:
        path.symlink_to(target)
    return build


def _directory(ctx: BuildContext, path: Path) -> None:
    path.mkdir()
    shutil.copy(SAMPLE, path / "correct.ipynb")
    (path / "notes.txt").write_text("a folder, not a notebook")


def _copy_sample(ctx: BuildContext, path: Path) -> None:
    shutil.copyfile(SAMPLE, path)


def _lazy(make: Callable[[], dict]) -> Callable[[BuildContext, Path], None]:
    def build(ctx: BuildContext, path: Path) -> None:
        path.write_text(json.dumps(make(), indent=1))
    return build


SHADOW = "/etc/shadow" if os.path.exists("/etc/shadow") else "/etc/passwd"

# --- the corpus -------------------------------------------------------------------------------

CONTROL = "control_correct"
UNTRAINED_CONTROL = "untrained_control"

CASES: list[Case] = [
    # controls
    Case(CONTROL, "control", "the real submissions/correct.ipynb, trained at the quick preset",
         _copy_sample, "graded", r"(?i)test MSE per pixel", min_score=16.0001, trains=True),
    Case(UNTRAINED_CONTROL, "weak checks", "every model freshly constructed, never trained",
         _lazy(untrained_nb), "graded", UNTRAINED),
    # forged scores
    Case("forged_savez_sha_json", "forgery",
         "last cell replaces numpy.savez (perfect arrays), hashlib.sha256 (always equal) and json.dump",
         untrained_plus(FORGED_SCORES), "graded", UNTRAINED, forgery=True),
    Case("input_transformer", "forgery",
         "an IPython input transformer appends a forgery to every later cell, the grader's probe included",
         untrained_plus(INPUT_TRANSFORMER), "graded", UNTRAINED, forgery=True),
    Case("lookup_table_models", "forgery",
         "encode stores each image under the code it returns, decode gives it back",
         untrained_plus(LOOKUP_MODELS), "graded", UNTRAINED, forgery=True),
    Case("class_liar", "forgery",
         "models that are not modules but claim their class through a __class__ property",
         untrained_plus(CLASS_LIAR), "graded", UNTRAINED, forgery=True),
    Case("tuned_decodes_training_images", "forgery",
         "vae_tuned.decode ignores z and returns stored training images",
         untrained_plus(STORED_IMAGES), "graded", UNTRAINED, forgery=True),
    Case("kl_sign_fixed_by_savez", "forgery",
         "the KL sign bug, plus a cell wrapping numpy.savez that negates the KL's output",
         _lazy(lambda: with_cells(_kl_sign_nb(), KL_SAVEZ_FIX)), "graded",
         r"(?i)(never negative|sign)", forgery=True),
    Case("state_dict_patched", "forgery",
         "each model's state_dict is replaced: wrong shapes, a path-like key, a string, a raise, strings",
         untrained_plus(STATE_DICT_PATCHED), "graded", UNTRAINED, forgery=True),
    Case("state_dict_global_nan", "forgery",
         "torch.nn.Module.state_dict monkeypatched globally to return NaN weights",
         untrained_plus(STATE_DICT_GLOBAL), "graded", r"(?i)(mean image|not finite|nan|could not be measured|weights)",
         forgery=True),
    # weak-check probes
    Case("trained_on_128_images", "weak checks",
         "the correct code trained on only 128 training images (the quick preset's epochs)",
         _lazy(_trained_128_nb), "graded", UNTRAINED, max_score=6.0, trains=True),
    Case("overfit_128_images", "weak checks",
         "the correct code trained on only 128 training images for 25x the epochs",
         # 100 Adam steps on 128 images do learn a little (AE MSE 0.054 against the mean image's
         # 0.068, a collapsed beta=10 VAE): partial credit that follows the metric, far below 18.
         _lazy(lambda: _trained_128_nb(25)), "graded", UNTRAINED, max_score=12.0, trains=True),
    # disk
    Case("disk_fill", "disk", "1 GiB written, then 2 GiB posix_fallocate'd in the scratch directory",
         untrained_plus(DISK_WRITE, DISK_FALLOCATE), "error", DISK_FULL),
    Case("deep_tree", "disk", "a directory tree 1500 levels deep (151 kB paths) in the working directory",
         untrained_plus(DEEP_TREE), "graded", UNTRAINED),
    Case("sparse_outputs", "disk",
         "sparse 1 GiB files named weights.npz, probe.json, executed.ipynb, probe.npz, result.json",
         untrained_plus(SPARSE), "graded", UNTRAINED),
    Case("zip_bomb_weights", "disk",
         "weights.npz / probe.npz: 2 GiB of zeros deflated to a few MB, re-planted after every later cell",
         untrained_plus(ZIP_BOMB), "graded", UNTRAINED, forgery=True),
    # memory
    Case("memory_20gb", "memory", "allocates and touches 20 GB in 100 MB steps",
         # the per-process data limit (RLIMIT_DATA) fires first: a MemoryError in that cell, with a hint
         untrained_plus(MEMORY), "error", r"(?i)(out of memory|out-of-memory|memory limit|more than \d+ ?MB)"),
    # output
    Case("stdout_100mb", "output", "prints 100 MB", untrained_plus(STDOUT_FLOOD), "graded", OUTPUT_CAPPED,
         max_executed_bytes=10_000_000),
    Case("png_50mb", "output", "displays a 50 MB PNG", untrained_plus(BIG_PNG), "graded", OUTPUT_CAPPED,
         max_executed_bytes=10_000_000),
    Case("update_display_loop", "output", "update_display_data 12 times with a 20 MB payload",
         untrained_plus(UPDATE_DISPLAY), "graded", OUTPUT_CAPPED, max_executed_bytes=10_000_000),
    Case("widget_state_megabytes", "output", "widget comm_open and updates with 64 MB of state",
         untrained_plus(WIDGET_STATE), "graded", OUTPUT_CAPPED, max_executed_bytes=10_000_000),
    Case("widget_without_model_module", "output", "a widget comm_open whose state has no _model_module",
         untrained_plus(WIDGET_NO_MODULE), "graded", UNTRAINED),
    # processes
    Case("fork_bomb", "processes", "every process forks until the process limit; children keep their slot",
         untrained_plus(FORK_BOMB), "error",
         r"(?i)(resource temporarily unavailable|process limit|too many processes|fork bomb stopped)"),
    Case("thread_bomb", "processes", "starts threads until none can start",
         untrained_plus(THREAD_BOMB), "error",
         r"(?i)(can't start new thread|thread limit|too many threads|resource temporarily unavailable)"),
    Case("double_fork_daemon", "processes", "a daemon (double fork, setsid, exec sh) that outlives its notebook",
         untrained_plus(DAEMON), "graded", UNTRAINED),
    Case("os_exit", "processes", "os._exit(3)", untrained_plus("import os\nos._exit(3)"), "crashed",
         r"(?i)(exited with code 3|kernel (died|exited|stopped))"),
    Case("sigkill_self", "processes", "SIGKILL of its own kernel",
         untrained_plus("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"), "crashed", r"(?i)(SIGKILL|killed)"),
    Case("segfault", "processes", "a segfault via ctypes", untrained_plus("import ctypes\nctypes.string_at(0)"),
         "crashed", r"(?i)(SIGSEGV|segmentation fault)"),
    Case("sys_exit", "processes", "sys.exit() in a cell", untrained_plus("import sys\nsys.exit()"), "error",
         r"SystemExit"),
    # names and files
    Case("gradebook.csv", "names and files", "a notebook named gradebook.csv.ipynb (the gradebook's own name)",
         # graded like any notebook, in a folder that cannot clash with the grader's own files
         _lazy(untrained_nb), "graded", UNTRAINED,
         filename="gradebook.csv.ipynb"),
    Case("shadow_link", "names and files", f"a symbolic link to {SHADOW}", _symlink_to(SHADOW), "invalid",
         r"(?i)(symbolic link|symlink)"),
    Case("x", "names and files", "a directory named x.ipynb", _directory, "invalid", r"(?i)(directory|folder)",
         filename="x.ipynb"),
    Case("source_is_int", "names and files", 'a code cell with "source": 5', _lazy(_source_int_nb), "invalid",
         r"(?i)source"),
    Case("list_metadata", "names and files", "a cell whose metadata is a list", _lazy(_list_metadata_nb),
         "invalid", r"(?i)metadata"),
    Case("not_json", "names and files", "plain text, not JSON", raw(b"this is my homework, see attached\n"),
         "invalid", r"(?i)(not a (jupyter )?notebook|json)"),
    Case("empty_file", "names and files", "an empty file", raw(b""), "invalid",
         r"(?i)(empty|not a (jupyter )?notebook)"),
    Case("zero_cells", "names and files", "a valid notebook with no cells",
         write_nb({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}), ("invalid", "graded"),
         r"(?i)(no cells|empty|parameters)", max_score=0.0),
    # contract breakers and student mistakes
    Case("huge_histories", "histories", "ae_history and three vae_histories of 100 000 entries each",
         untrained_plus(HUGE_HISTORY), "graded", UNTRAINED, max_result_bytes=2_000_000),
    Case("cuda_hardcoded", "student mistakes", "device = torch.device('cuda') and .cuda() hard-coded",
         _lazy(_cuda_nb), "error", r"(?i)(cuda|gpu)[^\n]{0,400}(is_available|\bcpu\b)", cpu_only=True),
    Case("colab_cells", "student mistakes", "from google.colab import drive; drive.mount(...); !pip; %cd",
         _lazy(_colab_nb), "error", r"(?i)colab[^\n]{0,400}(remove|delete|skip|outside|only)"),
    Case("missing_parameters_tag", "student mistakes", "the parameters cell lost its tag",
         _lazy(_untagged_nb), "graded", r"(?i)(tag[^\n]{0,100}parameters|parameters[^\n]{0,100}tag)"),
    Case("infinite_loop", "time", "while True: pass", untrained_plus("while True:\n    pass"), "timeout",
         r"(?i)(ran longer than|timed? ?out|time limit)"),
    # confinement
    Case("network_urllib", "confinement", "urllib to pypi.org", untrained_plus(NETWORK), "error",
         r"(?i)(urlerror|name resolution|network is unreachable|no network|network)"),
    Case("network_socket", "confinement", "a TCP connection to a pypi.org address, no DNS",
         untrained_plus(SOCKET), "error", r"(?i)(network is unreachable|no network|oserror|timed out|refused)"),
    Case("read_passwd", "confinement", "prints /etc/passwd and /etc/shadow",
         untrained_plus("print(open('/etc/passwd').read())\nprint(open('/etc/shadow').read())"), "error",
         FILE_REFUSED),
    Case("read_grader_cache", "confinement", "prints the grader's cache (~/.cache/grader) and planted host files",
         _read_host_files, "error", FILE_REFUSED),
    Case("env_dump", "confinement", "prints its environment and /proc/*/environ",
         _env_dump, "graded", UNTRAINED),
    Case("write_outside", "confinement",
         "writes to the repository, the venv's site-packages, /tmp, ~, the cache, OUT and its own submission",
         _write_outside, "error", FILE_REFUSED),
]


def _kl_sign_nb() -> dict:
    nb = untrained_nb()
    cell = nb["cells"][_find(nb, "def kl_divergence")]
    good = "return 0.5 * (mu**2 + torch.exp(2 * log_sigma) - 1 - 2 * log_sigma).sum(dim=1)"
    if good not in _src(cell):
        raise ValueError("the sample's KL line changed")
    cell["source"] = _src(cell).replace(
        good, "return 0.5 * torch.sum(1 + 2 * log_sigma - mu**2 - torch.exp(2 * log_sigma), dim=1)")
    return nb


def check_names() -> None:
    names = [c.name for c in CASES]
    assert len(set(names)) == len(names), "two cases share a name"
    assert all(re.compile(c.message) for c in CASES)


def build_corpus(ctx: BuildContext) -> dict[str, Path]:
    """Writes every case into ctx.corpus; returns name -> submission path."""
    check_names()
    ctx.corpus.mkdir(parents=True, exist_ok=True)
    paths = {}
    for case in CASES:
        path = ctx.corpus / case.file
        case.build(ctx, path)
        paths[case.name] = path
    return paths
