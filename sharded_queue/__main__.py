"""``python -m sharded_queue``: see `sharded_queue.cli`."""

from .cli import main

raise SystemExit(main())
