"""Data loading: JSON indices -> audio + 51-dim FLAME motion at 25 fps (docs/ARCHITECTURE.md, "Module map")."""
