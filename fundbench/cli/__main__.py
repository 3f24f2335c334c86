"""``python -m fundbench.cli`` (e.g. under ``torchrun``) runs the ``fundbench`` command."""

from fundbench.cli.main import main

raise SystemExit(main())
