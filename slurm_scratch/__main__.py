import sys

from slurm_scratch.cli import main

sys.exit(main())
