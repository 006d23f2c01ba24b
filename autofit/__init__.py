"""autofit: find the fastest fine-tuning configuration that fits in GPU memory, by measuring it."""

__version__ = "0.1.0"
