# Keeps Hugging Face offline in tests. (The repo root is importable: pytest puts this file's folder
# on sys.path.)
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
