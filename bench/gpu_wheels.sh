#!/usr/bin/env bash
# Download, on a machine that reaches the package index, the wheels that bench/gpu_check.sh
# installs on a GPU node that cannot (Python 3.12, manylinux x86_64): what this toolkit
# imports and such a node's own Python may lack. They go to .whl/ in the repository root
# (git-ignored); gpu_check.sh installs them from there with pip --no-index.
#
#   bash bench/gpu_wheels.sh            # then copy the repository, .whl/ included, to the node
#
# plotly (+ narwhals, its dependency): the HTML pages of --plot. mpich: mpiexec and the MPI
# library; mpi4py: the Python binding matched to it (the node's own, if it has an MPI, is
# tried first). Versions: the ones the test suite runs with here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-"plotly==7.1.0 narwhals==2.29.0 mpich==5.0.2 mpi4py==4.1.2"}
mkdir -p .whl
# shellcheck disable=SC2086
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $WHEELS
ls -l .whl
du -sh .whl
