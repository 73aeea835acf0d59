"""Top-level training entry point: python train.py --config CFG [SECTION.key=value ...]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from main.train import cli

if __name__ == "__main__":
    cli()
