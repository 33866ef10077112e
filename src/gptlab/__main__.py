"""`python -m gptlab` is the `gptlab` command."""

from gptlab.cli import main

raise SystemExit(main())
