#!/usr/bin/env bash
# The GPU check: one short script for a lent GPU machine (no internet, the repository copied,
# .venv perhaps absent). About 6-8 minutes on one H200:
#   1. nvidia-smi, and the devices and slots the grader plans from it (grader/devices.py);
#   2. the suite's GPU tests (tests/test_gpu.py -m gpu) under GPU_REQUIRED=1: a skip fails;
#   3. a batch of 4 copies of submissions/correct.ipynb graded on GPU slots (--kernels-per-gpu 4)
#      at the handout's parameters, then the same batch on GPU slots and on CPU slots
#      (--kernels-per-gpu 0) at the quick preset: the handout's parameters on the CPU take ~6 min
#      a notebook at one thread, more than the lease can spare, so GPU against CPU is compared
#      at quick (EPOCHS=4, TRAIN_SUBSET=16384);
#   4. a table of each notebook's kernel time (execution seconds) and device, per run.
# No PDFs (--no-pdf): the PDF is the grader's own work, the same on either device.
#
# The Python it uses: .venv when it works; else the machine's python3, into which it installs
# the wheels in .whl/ (and unpacks the .debs in .debs/, e.g. WeasyPrint's pango) and the grader
# itself (editable, no dependencies); else scripts/bootstrap.sh. MNIST comes from .mnist/ (the
# four idx files, .gz or not) when there, else from the grader's usual sources. Prepare .whl/,
# .debs/ and .mnist/ on a machine with the package index with bench/gpu_prepare.sh and carry them.
#
# Environment: OUT (where the log and gpu_check.json go; default /tmp/gpu-check); GPU_CHECK_BUDGET_S
# (default 540: a batch that could end past it is skipped, and says so);
# GPU_CHECK_DRY=1 runs the same steps at the smoke preset without requiring a GPU (the script's
# own test on a CPU host).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-check}
work=$(mktemp -d /tmp/gpu-check-work.XXXXXX)
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
started=$SECONDS
say() { printf '\n== [%3ds] %s\n' $((SECONDS - started)) "$*"; }

dry=${GPU_CHECK_DRY:-0}
if [[ $dry == 1 ]]; then handout=(--preset smoke); quick=(--preset smoke); required=0
else handout=(); quick=(--preset quick); required=1; fi

# --- 1. Python ---------------------------------------------------------------------------------
usable() { "$1" -c "import grader.cli, torch, nbclient, ipykernel, weasyprint, pydantic" 2>/dev/null; }
say "Python"
if [[ -x .venv/bin/python ]] && usable .venv/bin/python; then
  PY=.venv/bin/python
else
  PY=$(command -v python3)
  if [[ -d .debs ]]; then for f in .debs/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
  if [[ -d .whl ]]; then  # into the interpreter's own environment: the sandboxed kernel runs it too
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --ignore-requires-python -e . >/dev/null 2>&1
  if ! usable "$PY"; then
    echo "no Python with the grader's dependencies here; trying scripts/bootstrap.sh"
    bash scripts/bootstrap.sh && PY=.venv/bin/python
  fi
fi
if ! usable "$PY"; then
  "$PY" -c "import grader.cli, torch, nbclient, ipykernel, weasyprint, pydantic"
  echo "gpu_check: no usable Python (see the import error above); carry .whl/ (bench/gpu_prepare.sh)"
  exit 2
fi
grader=("$PY" -c 'import sys; from grader.cli import app; sys.argv[0] = "grader"; app()')
"$PY" -c "import sys, torch; print(sys.executable, sys.version.split()[0], 'torch', torch.__version__,
      'cuda', torch.cuda.is_available(), torch.cuda.device_count())"
if [[ -d .mnist ]]; then "${grader[@]}" data --source .mnist; else "${grader[@]}" data; fi || { echo "gpu_check: no MNIST"; exit 2; }

# --- 2. devices --------------------------------------------------------------------------------
say "nvidia-smi"
nvidia-smi -L || echo "(no nvidia-smi)"
nvidia-smi --query-gpu=index,uuid,name,memory.total,mig.mode.current,pci.bus_id --format=csv || true
"$PY" - <<'EOF'
from grader.devices import describe_slots, discover_gpus, plan_slots
inventory = discover_gpus()
print("devices:", [(d.uuid, d.name, d.memory_mb, f"/dev/nvidia{d.minor}") for d in inventory.devices], inventory.notes)
for k in (1, 4):
    slots = plan_slots(4, kernels_per_gpu=k, gpus=inventory.devices)
    print(f"--workers 4 --kernels-per-gpu {k}:", describe_slots(slots, 4), [s.label for s in slots])
EOF
which bwrap >/dev/null 2>&1 || echo "(no bubblewrap here: kernels run unconfined, every GPU node visible)"

# --- 3. the suite's GPU tests -----------------------------------------------------------------
say "GPU tests"
GPU_REQUIRED=$required timeout 240 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py -rs
tests_rc=$?
timeout 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_devices.py || tests_rc=1

# --- 4. the batch: GPU at the handout's parameters, GPU and CPU at quick ----------------------
# The reference models first (trained on the GPU on a fresh machine, then cached), so that the
# batches time the notebooks, not the reference.
say "reference models (trained once, cached)"
timeout 240 "${grader[@]}" reference "${handout[@]}" | tail -3
timeout 120 "${grader[@]}" reference "${quick[@]}" | tail -3
mkdir -p "$work/batch"
for i in 1 2 3 4; do cp submissions/correct.ipynb "$work/batch/correct_$i.ipynb"; done
run_batch() {  # name, time limit, then grade's options; skipped when the lease is nearly spent
  local name=$1 limit=$2; shift 2
  if (( SECONDS - started + limit > ${GPU_CHECK_BUDGET_S:-540} )); then
    say "skipped $name: it could pass the check's ${GPU_CHECK_BUDGET_S:-540} s budget"; return
  fi
  say "grade $name: $*"
  local t=$SECONDS
  timeout "$limit" "${grader[@]}" grade "$work/batch" --out "$work/$name" --no-pdf "$@" 2>&1 | grep -v "^findfont"
  echo "$name: rc ${PIPESTATUS[0]} in $((SECONDS - t)) s"
  echo "$name $((SECONDS - t))" >> "$work/walls"
}
run_batch gpu_handout 180 --workers 4 --kernels-per-gpu 4 "${handout[@]}"
run_batch gpu_quick 100 --workers 4 --kernels-per-gpu 4 "${quick[@]}"
run_batch cpu_quick 150 --workers 4 --kernels-per-gpu 0 "${quick[@]}"

say "per notebook: kernel seconds (device)"
"$PY" - "$work" "$out/gpu_check.json" <<'EOF'
import json, sys
from pathlib import Path
work, target = Path(sys.argv[1]), Path(sys.argv[2])
walls_file = work / "walls"
walls = dict(line.split() for line in walls_file.read_text().splitlines()) if walls_file.exists() else {}
runs = {}
for name in ("gpu_handout", "gpu_quick", "cpu_quick"):
    runs[name] = {"wall_s": float(walls.get(name, "nan")), "notebooks": {}}
    for result in sorted((work / name).glob("*/result.json")):
        r = json.loads(result.read_text())
        runs[name]["notebooks"][r["submission"]] = {"status": r["status"], "score": r["score"],
                                                    "seconds": r["seconds"], "device": r["device"]}
print(f"{'notebook':<12}" + "".join(f"{n:>34}" for n in runs))
for nb in sorted({nb for run in runs.values() for nb in run["notebooks"]}):
    cells = []
    for run in runs.values():
        r = run["notebooks"].get(nb)
        cells.append(f"{r['seconds']:8.1f} s {r['status']:<7}{r['device'][:17]:>17}" if r else f"{'-':>34}")
    print(f"{nb:<12}" + "".join(f"{c:>34}" for c in cells))
print("batch wall:  " + "".join(f"{run['wall_s']:>32.0f} s" for run in runs.values()))
mean = {n: sum(r["seconds"] for r in run["notebooks"].values()) / max(len(run["notebooks"]), 1) for n, run in runs.items()}
if mean.get("gpu_quick") and mean.get("cpu_quick"):
    print(f"quick preset, kernel time per notebook: CPU {mean['cpu_quick']:.1f} s / GPU {mean['gpu_quick']:.1f} s "
          f"= {mean['cpu_quick'] / mean['gpu_quick']:.1f}x")
gpu_devices = {r["device"] for n in ("gpu_handout", "gpu_quick") for r in runs[n]["notebooks"].values()}
if gpu_devices and not any(d.startswith("cuda:") for d in gpu_devices):
    print("NOTE: the --kernels-per-gpu runs ran their kernels on", gpu_devices,
          "- the job code does not hand the slots to execute_notebook yet")
target.write_text(json.dumps(runs, indent=1))
EOF
rm -rf "$work"
say "done (GPU tests rc $tests_rc)"
exit $tests_rc
