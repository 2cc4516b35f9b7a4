"""OpenCV's Caffe importer as an independent runtime for written weights (``verify``).

``cv2.dnn.readNetFromCaffe`` parses the prototxt and the ``.caffemodel`` with OpenCV's own
copy of the Caffe schema. Fusion is disabled so that a conv layer's output is its own, before
any in-place BatchNorm / Scale / ReLU that follows it.
"""

from __future__ import annotations

import numpy as np

from ...errors import LsuvError


def load_cv2():
    try:
        import cv2
    except ImportError:
        raise LsuvError("measuring Caffe models needs OpenCV: pip install 'lsuv-convert[opencv]' "
                        "(opencv-python-headless<5)") from None
    if not hasattr(getattr(cv2, "dnn", None), "readNetFromCaffe"):
        raise LsuvError(f"OpenCV {cv2.__version__} has no Caffe importer (OpenCV 5 dropped it); "
                        "install opencv-python-headless<5")
    return cv2


def opencv_net(deploy_text: str, weights: bytes):
    """A ``cv2.dnn.Net`` from prototxt text and .caffemodel bytes, on OpenCV's CPU backend."""
    cv2 = load_cv2()
    try:
        net = cv2.dnn.readNetFromCaffe(np.frombuffer(deploy_text.encode(), dtype=np.uint8),
                                       np.frombuffer(weights, dtype=np.uint8))
    except cv2.error as exc:
        raise LsuvError(f"OpenCV cannot read the net: {str(exc).strip().splitlines()[-1]}") from None
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.enableFusion(False)
    if hasattr(net, "enableWinograd"):
        net.enableWinograd(False)  # exact float32 convolutions, comparable with torch
    return net


def opencv_forward(net, inputs: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    """Outputs of the layers ``names`` for the given inputs (blob name -> array)."""
    cv2 = load_cv2()
    for name, array in inputs.items():
        net.setInput(np.ascontiguousarray(array, dtype=np.float32), name)
    try:
        outs = net.forward(list(names))
    except cv2.error as exc:
        raise LsuvError(f"OpenCV cannot run the net: {str(exc).strip().splitlines()[-1]}") from None
    return [np.asarray(o) for o in outs]
