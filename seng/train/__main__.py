"""``python -m seng.train``."""

from .cli import main

raise SystemExit(main())
