#!/usr/bin/env bash
# Install the peers into a throwaway virtual environment from the package registries:
# PyPI's torch (scaled_dot_product_attention), sentence-transformers, and
# llama-cpp-python, which builds llama.cpp from source for this CPU.
#
# Usage: bench/peers/setup.sh [VENV]   (default: bench/.venv-peers, or $PEERS_VENV)
# Prints the venv's python path on the last line. Each peer installs on its own,
# so one that fails leaves the others usable; compare.py reports it as failed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${1:-${PEERS_VENV:-$here/../.venv-peers}}
python3 -m venv "$venv" || exit 1
# llama.cpp's CMake flags for this CPU's ISA, without AMX: ggml's AMX path crashes on
# every multi-token batch in virtual machines that report AMX but do not grant the
# tile state (seen on an Intel Xeon VM with llama-cpp-python 0.3.36).
llama_cmake_args() {
  local flags args="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
  local pair
  for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C avx512f:AVX512 avx512vbmi:AVX512_VBMI \
              avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16 avx_vnni:AVX_VNNI bmi2:BMI2; do
    if [[ " $flags " == *" ${pair%%:*} "* ]]; then args+=" -DGGML_${pair#*:}=ON"; fi
  done
  echo "$args"
}
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" numpy matplotlib || exit 1
# PyPI's Linux build of torch pulls in the CUDA libraries (several GB); it runs on
# the CPU all the same.
"${pip[@]}" torch || echo "warning: torch failed to install" >&2
"${pip[@]}" sentence-transformers || echo "warning: sentence-transformers failed to install" >&2
# --no-cache-dir: a wheel that pip cached from an earlier build with other flags
# (an AMX build, say) would otherwise be reused as it is.
CMAKE_ARGS=$(llama_cmake_args) "${pip[@]}" --no-cache-dir \
  --no-binary llama-cpp-python llama-cpp-python || echo "warning: llama-cpp-python failed to install" >&2
echo "$venv/bin/python"
