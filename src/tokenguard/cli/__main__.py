"""``python -m tokenguard.cli``: the ``tokenguard`` command (as ``python -m tokenguard``)."""

from tokenguard.cli import main

raise SystemExit(main())
