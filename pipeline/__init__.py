"""edgebuild: Keras 3 image model -> int8 TFLite/ONNX artifacts proven on an emulated ARM device.

The library never imports click; heavy frameworks (TensorFlow, JAX, Keras, the runtimes) are imported
only inside functions that stage processes run, so `edgebuild --help` answers at once.
"""

__version__ = "0.1.0"
