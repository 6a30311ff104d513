"""``python -m benchmarks``: run the suite and print one table."""

from benchmarks.run import main

raise SystemExit(main())
