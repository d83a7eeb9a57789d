"""Hand-off to mig-parted, Kubernetes and Slurm."""
