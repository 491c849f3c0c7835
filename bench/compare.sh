#!/usr/bin/env bash
# Benchmark attend against PyTorch, sentence-transformers and llama.cpp on the same
# machine in one session, and write the table of ratios into BENCHMARKS.md.
#
# Usage: bench/compare.sh [--quick] [--attend-only] [--out FILE] [other bench/compare.py options]
#   --quick        one small case per group and one round (a minute, not an hour)
#   --attend-only  skip the peers (no virtual environment is made)
# The peers are installed into bench/.venv-peers (or $PEERS_VENV) by bench/peers/setup.sh;
# set PEER_PYTHON to reuse an existing environment.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

attend_only=0
pass=()
for arg in "$@"; do
  case "$arg" in
    --attend-only) attend_only=1 ;;
    *) pass+=("$arg") ;;
  esac
done

scripts/fetch-models.sh >&2
cargo build --release -p attend-cli >&2
attend=$root/target/release/attend

peer=()
if [[ $attend_only -eq 0 ]]; then
  python=${PEER_PYTHON:-}
  if [[ -z "$python" ]]; then
    # If even the environment cannot be made, the peers run under the system python and
    # fail to import, so each peer cell of the table reports the failure.
    python=$(bench/peers/setup.sh | tail -n 1) || {
      echo "warning: bench/peers/setup.sh failed; the peers will be reported as failed" >&2
      python=$(command -v python3)
    }
  fi
  peer=(--peer-python "$python")
fi
python3 bench/compare.py --attend "$attend" "${peer[@]}" "${pass[@]}"
