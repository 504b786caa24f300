"""slurm-scratch: striped local-NVMe /scratch, per-job directories and health-driven drain for Slurm.

Hooks import this package on every job, so it imports nothing at package level.
"""

__version__ = "0.1.0"
