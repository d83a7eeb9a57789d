"""The simulated NVML and MPS stand-ins."""
