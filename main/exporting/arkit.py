"""ARKit's 52 blendshapes as the Live Link Face app writes them, and its CSV.

The app (Epic Games' Live Link Face for iOS) writes one row per captured frame::

    Timecode,BlendShapeCount,EyeBlinkLeft,...,TongueOut,HeadYaw,HeadPitch,HeadRoll,LeftEyeYaw,...,RightEyeRoll
    00:00:01:12.000,61,0.0123,...

``BlendShapeCount`` is 61: the 52 ARKit coefficients in ``ARKIT_NAMES``'s order (the app's column
order, which is ARKit's ``ARFaceAnchor.BlendShapeLocation`` list grouped eyes / jaw / mouth / brows,
cheeks, nose / tongue, with JawRight before JawLeft and MouthRight before MouthLeft), then nine head
and eye rotations. ``Timecode`` is ``HH:MM:SS:FF.mmm``: FF counts frames within the second at the
take's frame rate and ``.mmm`` is the sub-frame fraction. Importers (Unreal's LiveLinkFaceImporter,
Blender add-ons) match the names case-insensitively; ARKit itself spells them camelCase.
"""
from __future__ import annotations

import io
import math

import numpy as np

from utils.atomic import atomic_write

ARKIT_NAMES = (
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft", "EyeSquintLeft",
    "EyeWideLeft", "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight", "EyeLookOutRight", "EyeLookUpRight",
    "EyeSquintRight", "EyeWideRight", "JawForward", "JawRight", "JawLeft", "JawOpen", "MouthClose",
    "MouthFunnel", "MouthPucker", "MouthRight", "MouthLeft", "MouthSmileLeft", "MouthSmileRight",
    "MouthFrownLeft", "MouthFrownRight", "MouthDimpleLeft", "MouthDimpleRight", "MouthStretchLeft",
    "MouthStretchRight", "MouthRollLower", "MouthRollUpper", "MouthShrugLower", "MouthShrugUpper",
    "MouthPressLeft", "MouthPressRight", "MouthLowerDownLeft", "MouthLowerDownRight", "MouthUpperUpLeft",
    "MouthUpperUpRight", "BrowDownLeft", "BrowDownRight", "BrowInnerUp", "BrowOuterUpLeft", "BrowOuterUpRight",
    "CheekPuff", "CheekSquintLeft", "CheekSquintRight", "NoseSneerLeft", "NoseSneerRight", "TongueOut",
)
# FLAME motion has no head or eye rotation: these columns are written as 0
ROTATION_COLUMNS = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
                    "RightEyeYaw", "RightEyePitch", "RightEyeRoll")
CSV_HEADER = ("Timecode", "BlendShapeCount", *ARKIT_NAMES, *ROTATION_COLUMNS)


def timecode(frame: int, fps: float) -> str:
    """Frame ``frame`` of a take at ``fps`` as ``HH:MM:SS:FF.mmm`` (FF: frames within the second)."""
    seconds = frame / fps
    whole = math.floor(seconds + 1e-9)
    frames_in = (seconds - whole) * fps
    ff = math.floor(frames_in + 1e-6)
    sub = min(int(round((frames_in - ff) * 1000)), 999)
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}:{ff:02d}.{sub:03d}"


def arkit_columns(names: list[str], weights: np.ndarray) -> np.ndarray:
    """Rig weights (T,K) under the rig's ``names`` -> (T,52) in ``ARKIT_NAMES``'s order, names matched
    case-insensitively; a shape the rig lacks is 0, a rig shape outside ARKit's set is left out."""
    column = {n.lower(): k for k, n in enumerate(names)}
    out = np.zeros((weights.shape[0], len(ARKIT_NAMES)), np.float32)
    for j, name in enumerate(ARKIT_NAMES):
        if name.lower() in column:
            out[:, j] = weights[:, column[name.lower()]]
    return out


def write_live_link_csv(path: str, arkit: np.ndarray, fps: float):
    """(T,52) ARKit weights at ``fps`` -> ``path`` in the Live Link Face layout, whole or not at all."""
    text = io.StringIO()
    text.write(",".join(CSV_HEADER) + "\n")
    rotations = ",".join(["0"] * len(ROTATION_COLUMNS))
    count = len(ARKIT_NAMES) + len(ROTATION_COLUMNS)
    for t, row in enumerate(arkit):
        text.write(f"{timecode(t, fps)},{count}," + ",".join(f"{w:.6f}" for w in row) + f",{rotations}\n")

    def save(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text.getvalue())
    atomic_write(path, save)
