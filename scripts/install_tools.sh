#!/usr/bin/env bash
# Installs the outside programs the export tests check exports with (each test whose program is missing
# skips): the Khronos glTF validator (npm, into tools/node_modules, from tools/package-lock.json) and, as
# root on Debian/Ubuntu, Blender (apt, 20 s to 1 min; its glTF importer plays the glb back) and chromium
# (apt, ~35 s, 330 MB; it plays viewer.html). None is needed to export. Re-running it installs only what
# is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
if command -v npm >/dev/null && [ ! -d tools/node_modules/gltf-validator ]; then
  (cd tools && npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>&1) || \
    echo "[tools] could not npm-install gltf-validator: its test will be skipped"
fi
apt_install() {  # program, package, what its test checks
  if ! command -v "$1" >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q "$2" >/dev/null 2>&1 || \
      (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$2" >/dev/null 2>&1) || \
      echo "[tools] could not install $2: $3 will be skipped"
  fi
}
apt_install blender blender "the glb's Blender playback test"
apt_install chromium chromium "the viewer's browser test"
