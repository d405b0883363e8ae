"""TensorFlow and Keras, started quietly: subpackages whose modules import TensorFlow or KerasTuner
at the top (`tfopt.prune`, `tfopt.tune`) import this module first.

Part of TensorFlow's C++ start-up output (absl's "All log messages before absl::InitializeLog()",
oneDNN, CUDA) ignores TF_CPP_MIN_LOG_LEVEL, so the first import of TensorFlow in a process must run
inside `tfopt._backend.quiet()`, which `import_keras` does.
"""

from tfopt._backend import import_keras

keras = import_keras()
