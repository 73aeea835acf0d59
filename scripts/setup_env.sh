# Sourced by scripts/test.sh and scripts/demo.sh: activates an environment with the project's
# dependencies. An already active venv/conda env is used as it is (missing packages installed);
# otherwise .venv is created or reused. torch is installed first on its own: torch==2.13.0 is the
# CPU build available offline on the CI machines; any torch >= 2.4 already present is kept.
if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    python3 -m venv .venv
  fi
  source .venv/bin/activate
fi
if ! python -c "import torch, sys; v=tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(v < (2, 4))" 2>/dev/null; then
  echo "[setup] installing torch"
  python -m pip install -q --no-compile "torch==2.13.0" || python -m pip install -q --no-compile "torch>=2.4"
fi
if ! python -c "import yaml, transformers, soundfile, h5py, soxr, librosa, tqdm, tensorboardX, trimesh, pyrender, imageio_ffmpeg, matplotlib, scipy, pytest, hypothesis, pocketsphinx, ruff, pygltflib" 2>/dev/null; then
  echo "[setup] installing requirements.txt"
  python -m pip install -q --no-compile -r requirements.txt
  # pyrender pins PyOpenGL 3.1.0, which fails with OSMesa on Python 3.11; a newer one works with
  # both EGL and OSMesa (pip prints a harmless conflict warning).
  python -m pip install -q --no-compile "PyOpenGL>=3.1.4" 2>/dev/null || true
fi
