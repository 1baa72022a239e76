"""What training and the deploy tools share about data: the stored dataset format
(`kvid.data.dataset`), video decoding (`kvid.data.video`), the tf.data input pipeline and its
clip sampling (`kvid.data.pipeline`), and the workdir contract (`kvid.data.workdir`).

The submodules are imported on use: `kvid.data.video` and `kvid.data.workdir` need no
TensorFlow.
"""
