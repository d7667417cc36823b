# Sourced by the setup scripts: apt_install PKG... installs the Debian packages given (none: nothing),
# with sudo when not root.
apt_install() {
  [ $# -gt 0 ] || return 0
  echo "installing $* ..." >&2
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >&2
}
