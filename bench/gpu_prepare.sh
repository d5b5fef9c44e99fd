#!/usr/bin/env bash
# Prepare what bench/gpu_check.sh needs on a GPU machine that has no internet and a python3 with
# torch but not the grader's other dependencies: run it here (with the package index), then carry
# .whl .debs .mnist with the check (each is ignored through .git/info/exclude).
#   .whl/   Python 3.12 wheels of the grader's dependencies the machine's image lacks
#   .debs/  WeasyPrint's system libraries (pango, harfbuzz-subset) as .deb files, unpacked there
#   .mnist/ the four MNIST idx files, gzipped (about 11 MB), from this machine's grader cache
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for d in .whl .debs .mnist; do grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude; done
rm -rf .whl .debs .mnist && mkdir -p .whl .debs .mnist

# What the GPU image already holds (bench/../.library device notes, KINDS.md): not carried.
present="numpy scipy matplotlib jinja2 markupsafe typer rich tqdm filelock markdown-it-py mdurl scikit-learn
httpx anyio certifi idna h11 httpcore click shellingham pygments pillow fonttools contourpy cycler kiwisolver
packaging pyparsing python-dateutil six joblib threadpoolctl psutil typing-extensions attrs setuptools
torch torchvision triton pytest pluggy iniconfig sympy mpmath networkx fsspec"
# The grader's runtime dependencies, without torch and torchvision (the image has its own).
deps=$("$PY" - <<'EOF'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(d.split("#")[0].strip() for d in deps if not re.match(r"torch(vision)?\b", d)))
EOF
)
dl=$(mktemp -d)
# shellcheck disable=SC2086
"$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$dl" $deps
for wheel in "$dl"/*.whl; do
  name=$(basename "$wheel" | cut -d- -f1 | tr '_' '-' | tr 'A-Z' 'a-z')
  [[ " $(echo $present) " == *" $name "* ]] || cp "$wheel" .whl/
done
rm -rf "$dl"

# WeasyPrint loads pango through cffi at import: the libraries and what they need beyond the image.
(cd .debs && apt-get download libpango-1.0-0 libpangoft2-1.0-0 libpangocairo-1.0-0 libharfbuzz-subset0 \
  libharfbuzz0b libfribidi0 libthai0 libdatrie1 libgraphite2-3 >/dev/null)

cache=$("$PY" -c "from grader.paths import default_data_dir; print(default_data_dir())")
for f in "$cache"/MNIST/raw/*-ubyte; do gzip -9c "$f" > ".mnist/$(basename "$f").gz"; done
du -sh .whl .debs .mnist
echo "carry: [\".whl\", \".debs\", \".mnist\"]; then run: bash bench/gpu_check.sh"
