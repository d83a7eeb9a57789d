"""The hardware boundary: MIG profile tables, layouts, NVML (real or simulated), MPS."""
