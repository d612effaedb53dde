"""`llm-launch` with the cyclic GC tuned as proposed for router/serve.py: a bench-only preview.

The router's heap (SQLAlchemy, Click, alembic) is large; with default thresholds, requests in
flight get promoted and a full collection scans that heap about twice a second under load.
Freezing start-up objects and raising the young threshold takes the collector off the path.
"""

from __future__ import annotations

import gc
import sys


def main() -> None:
    """Import what the router imports, freeze it, raise the threshold, then run the CLI."""
    import launcher.cli.router_cmd  # noqa: F401
    import router.app  # noqa: F401
    from launcher.cli import main as cli

    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    sys.argv[0] = "llm-launch"
    cli()


if __name__ == "__main__":
    main()
