"""fgrft's SLURM launcher: hydra-submitit-launcher's, with multi-node jobs split by node (launcher.py)."""
