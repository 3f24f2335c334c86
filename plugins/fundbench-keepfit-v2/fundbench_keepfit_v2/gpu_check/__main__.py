"""``python -m fundbench_keepfit_v2.gpu_check``: see :mod:`fundbench_keepfit_v2.gpu_check`."""

import sys

from fundbench_keepfit_v2.gpu_check.cli import main

sys.exit(main())
