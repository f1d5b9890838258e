"""``python -m seng.bench``."""

from .cli import main

raise SystemExit(main())
