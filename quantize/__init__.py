"""Quantization and training tools: data, train, convert (int8), evaluate, calibrate. Imports TensorFlow lazily."""
