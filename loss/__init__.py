"""The training loss: loss/loss.py."""
