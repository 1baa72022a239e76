"""The one place kvid picks its Keras: Keras 2 (`tf_keras`), the only one TFMOT can quantize."""

import tensorflow as tf
import tf_keras as keras

__all__ = ["keras", "tf"]
