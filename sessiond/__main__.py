"""``python -m sessiond``, and the ``sessiond`` command, whose entry point
is ``main`` here: the daemon, with the signals it acts on blocked first,
before its modules take a tenth of a second to import, so that one sent in
the process's first moments waits for the daemon rather than end it (see
``sessiond.daemon.SIGNALS``)."""

import signal
import sys


def main() -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    from sessiond.daemon import main as run

    return run()


if __name__ == "__main__":
    sys.exit(main())
