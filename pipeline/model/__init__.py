"""Models: built-in recipes, models users bring (functions, .keras and Keras 2 .h5 files), transfer
learning, fitting, quantization-aware training and conversion to TFLite and ONNX."""
