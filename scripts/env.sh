# Sourced by the scripts: Vulkan loaders (and lavapipe) want a private XDG_RUNTIME_DIR;
# make one when the session has none (root shells and containers often do not).
if [ -z "${XDG_RUNTIME_DIR:-}" ] || [ ! -d "${XDG_RUNTIME_DIR:-}" ]; then
  XDG_RUNTIME_DIR="$(mktemp -d "${TMPDIR:-/tmp}/quill-xdg.XXXXXX")"
  chmod 700 "$XDG_RUNTIME_DIR"
  export XDG_RUNTIME_DIR
fi
# Node.js from scripts/setup-dev.sh, where the system's was older than playwright-core's 20.
if [ -x "${XDG_CACHE_HOME:-$HOME/.cache}/quill/node/bin/node" ]; then
  case ":$PATH:" in
    *":${XDG_CACHE_HOME:-$HOME/.cache}/quill/node/bin:"*) ;;
    *) export PATH="${XDG_CACHE_HOME:-$HOME/.cache}/quill/node/bin:$PATH" ;;
  esac
fi
