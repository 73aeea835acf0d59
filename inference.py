"""Top-level inference entry point (no PYTHONPATH needed):

    python inference.py --config CFG [--checkpoint P] [--overwrite] [SECTION.key=value ...]   # test splits
    python inference.py [--config CFG] --audio speech.wav [--style STYLE] [--out DIR] [--render]

See main/inference.py for the output layout.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from main.inference import main

if __name__ == "__main__":
    main()
