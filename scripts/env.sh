# Sourced by the scripts: Vulkan loaders (and lavapipe) want a private XDG_RUNTIME_DIR;
# make one when the session has none (root shells and containers often do not).
if [ -z "${XDG_RUNTIME_DIR:-}" ] || [ ! -d "${XDG_RUNTIME_DIR:-}" ]; then
  XDG_RUNTIME_DIR="$(mktemp -d "${TMPDIR:-/tmp}/quill-xdg.XXXXXX")"
  chmod 700 "$XDG_RUNTIME_DIR"
  export XDG_RUNTIME_DIR
fi
