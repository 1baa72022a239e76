"""kvid: efficient video recognition models for phones and the Coral Edge TPU."""

from setuptools import find_packages, setup

# The source folders training/ and tflite/ are installed as kvid_training and kvid_tflite so that
# they never shadow the unrelated PyPI package called `tflite`.
PACKAGES = find_packages(include=["kvid", "kvid.*"]) + ["kvid_training", "kvid_tflite"]

setup(
    name="kvid",
    version="0.1.0",
    description="Efficient video recognition in TensorFlow/Keras, exported to int8 TFLite.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.12",
    packages=PACKAGES,
    package_dir={"kvid_training": "training", "kvid_tflite": "tflite"},
    package_data={"kvid_training": ["flags/*.flags"]},
    install_requires=[
        "tensorflow==2.21.*",
        "tf-keras==2.21.*",
        "tensorflow-model-optimization==0.8.*",
        "ai-edge-litert",
        "absl-py",
        "numpy",
        "av",
        "matplotlib",
    ],
    extras_require={
        "dev": ["pytest", "pytest-xdist", "ruff", "hypothesis"],
        # kvid-prepare as an Apache Beam pipeline (Dataflow, Flink, Spark; DirectRunner locally).
        "beam": ["apache-beam>=2.77,<3"],
    },
    entry_points={
        "console_scripts": [
            "kvid-benchmark=kvid_tflite.benchmark:run",
            "kvid-classify=kvid_tflite.classify:run",
            "kvid-convert=kvid_tflite.convert:run",
            "kvid-edgetpu-check=kvid_tflite.edgetpu:run",
            "kvid-eval=kvid_tflite.evaluate:run",
            "kvid-port=kvid_training.port:run",
            "kvid-prepare=kvid_training.prepare:run",
            "kvid-train=kvid_training.train:run",
        ]
    },
)
