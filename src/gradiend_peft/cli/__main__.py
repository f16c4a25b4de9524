"""``python -m gradiend_peft.cli``: the same as the ``gradiend-peft`` command."""

from . import main

raise SystemExit(main())
