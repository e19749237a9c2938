import sys

from pytest_rerun_runs.cli import main

sys.exit(main())
