#!/usr/bin/env bash
# The GPU performance check of issue 15 in one command (see benchmarks/gpu_check.py):
#
#     bash benchmarks/gpu_check.sh [extra arguments of python -m benchmarks.gpu_check]
#
# Writes every JSON to $OUT (the device machine's output folder), else benchmarks/results/gpu-check/.
# Uses the `python` on PATH (on the device machine: its own torch). Packages it lacks (pydantic,
# snakemake, papermill, ...) can travel as wheels in .whl/ (carry it); only the wheels whose
# distribution is not installed yet are installed, with --no-deps, into /tmp/site. To make .whl/
# here, download the project's pins with their dependencies for the device's Python 3.12:
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl pydantic==2.14.4 snakemake==9.27.1 papermill==2.7.0 ipykernel==7.4.0
# and drop from .whl/ whatever the device image already has (KINDS.md lists it) to stay under
# the 64 MiB a call may carry. A stage whose packages are still missing is skipped and says so.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results/gpu-check}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  wanted=$(python - <<'PY'
import glob, importlib.metadata as md, re
for path in sorted(glob.glob(".whl/*.whl")):
    name = re.split(r"-\d", path.split("/")[-1], maxsplit=1)[0]
    try:
        md.distribution(name)
    except md.PackageNotFoundError:
        print(path)
PY
)
  if [ -n "$wanted" ]; then
    echo "installing missing wheels: $wanted"
    python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $wanted \
      && export PYTHONPATH="$PYTHONPATH:/tmp/site" PATH="/tmp/site/bin:$PATH"
  fi
fi
mkdir -p "$out"
python -m benchmarks.gpu_check --out "$out" "$@" 2>&1 | tee "$out/gpu-check.log"
