"""``python -m tokenguard``: the ``tokenguard`` command."""

from tokenguard.cli import main

raise SystemExit(main())
