"""miso: choose, apply and run MIG layouts for a queue of GPU training jobs."""

__version__ = "0.1.0"
