"""`python -m dreamctl` and the `dreamctl` console script."""

import sys


def run() -> int:
    try:
        from dreamctl.cli import main
    except KeyboardInterrupt:  # Ctrl-C while the command modules load (ablate's jobs share its terminal's):
        return 130             # nothing has started, and a traceback of the import would say nothing
    return main()


if __name__ == "__main__":
    sys.exit(run())
