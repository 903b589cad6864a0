#!/usr/bin/env bash
# Set up WorldScape in ./.venv from a fresh clone: the one system library MuJoCo needs to
# render offscreen on a CPU (OSMesa), then the package and its pinned dependencies.
#   bash setup.sh          # the package
#   bash setup.sh --test   # the package and the test tools
# PYTHON=python3.11 bash setup.sh picks the interpreter (3.10 or newer).
# ROS 2: with a sourced ROS 2 install (ROS_DISTRO set) the venv sees its rclpy; without one,
# the ROS 2 Jazzy wheels from PyPI are installed (the '.[ros]' extra), so the nodes run here too.
set -euo pipefail
cd "$(dirname "$0")"

extras="ros"
case "${1:-}" in
  --test) extras="ros,test" ;;
  "") ;;
  *) echo "usage: bash setup.sh [--test]" >&2; exit 2 ;;
esac

py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "setup.sh: need Python >= 3.10 as '$py' (set PYTHON=...)" >&2
  exit 1
fi

# Offscreen rendering for the episode videos (MUJOCO_GL=osmesa). Without it everything
# else works and `ws mppi run` says that it skips the video.
if ! ldconfig -p 2>/dev/null | grep -q 'libOSMesa\.so'; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup.sh: installing libosmesa6 for offscreen rendering"
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libosmesa6 >/dev/null; } \
      || echo "setup.sh: warning: could not install libosmesa6; videos will be skipped" >&2
  else
    echo "setup.sh: warning: no apt-get; install OSMesa (libOSMesa.so) yourself for videos" >&2
  fi
fi

if [ -n "${ROS_DISTRO:-}" ]; then
  extras="${extras#ros}"; extras="${extras#,}"
  echo "setup.sh: using the sourced ROS 2 ${ROS_DISTRO} (rclpy from its install)"
  [ -x .venv/bin/python ] || "$py" -m venv --system-site-packages .venv
else
  [ -x .venv/bin/python ] || "$py" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
echo "setup.sh: ready: .venv/bin/ws --help"
