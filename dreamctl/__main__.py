"""`python -m dreamctl` and the `dreamctl` console script."""

import sys


def run() -> int:
    try:
        from dreamctl.signals import stop_with_parent

        stop_with_parent()  # a job of `ablate`: stop (and checkpoint) if ablate itself is killed
        from dreamctl.cli import main
    except KeyboardInterrupt:  # Ctrl-C while the command modules load (ablate's jobs share its terminal's):
        return 130             # nothing has started, and a traceback of the import would say nothing
    return main()


if __name__ == "__main__":
    sys.exit(run())
