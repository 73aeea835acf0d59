#!/usr/bin/env bash
# Installs the outside programs the export tests check a glb with (tests/test_export_glb.py skips each
# check whose program is missing): the Khronos glTF validator (npm, into tools/node_modules, from
# tools/package-lock.json) and, as root on Debian/Ubuntu, Blender (apt; its glTF importer plays the glb
# back). Neither is needed to export. Re-running it installs only what is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
if command -v npm >/dev/null && [ ! -d tools/node_modules/gltf-validator ]; then
  (cd tools && npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>&1) || \
    echo "[tools] could not npm-install gltf-validator: its test will be skipped"
fi
if ! command -v blender >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get install -y -q blender >/dev/null 2>&1 || \
    (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q blender >/dev/null 2>&1) || \
    echo "[tools] could not install blender: its playback test will be skipped"
fi
