"""edgebuild: Keras 3 image model -> int8 TFLite/ONNX artifacts proven on an emulated ARM device.

The library never imports click; heavy frameworks are imported inside the stages that use them.
"""

__version__ = "0.1.0"
