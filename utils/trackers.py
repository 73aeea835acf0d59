"""The FLAME trackers' file formats: the key names each tracker writes (``FORMATS``), the one list of
formats. dataset/flame_params.py decodes a file by its row; the config accepts exactly its keys as
``DATA.datasets.<name>.format`` (utils/config_schema.py). Adding a tracker format is one row here.
"""
from __future__ import annotations

# The key names each tracker writes, in order of preference: expression, jaw as
# (key, column of the jaw opening) and identity shape. emoca covers DECA and EMOCA: their code dict in
# memory (``expcode``, ``posecode`` = global rotation 3 + jaw 3, ``shapecode``), EMOCA's save_codes
# files and DECA's dict without the ``code`` suffix (``exp``, ``pose``, ``shape``), and the inferno
# pipeline's ``jaw`` (3) beside a separate ``global_pose`` (not needed: the motion has the jaw only).
FORMATS = {
    "emoca": {"expr": ("expcode", "exp"), "jaw": (("posecode", 3), ("pose", 3), ("jaw", 0)),
              "shape": ("shapecode", "shape")},
    "vhap": {"expr": ("expr",), "jaw": (("jaw_pose", 0),), "shape": ("shape",)},
}
