"""`python -m kcompat` and the `kcompat` command. An interrupt while the CLI is still
importing (typer, rich: a few hundred ms) ends as quietly as one later: "interrupted",
exit 130, no traceback; kcompat.cli.main then handles SIGINT itself."""

from __future__ import annotations

import os
import signal


def _interrupted(_sig: int, _frame: object) -> None:
    # os.write, not sys.stderr: a half-imported interpreter may never flush that
    os.write(2, b"kcompat: interrupted\n")
    os._exit(130)


def run() -> None:
    previous = signal.signal(signal.SIGINT, _interrupted)
    from kcompat.cli import main

    if previous is signal.SIG_IGN:  # started with SIGINT ignored: keep it ignored
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        main()
    except KeyboardInterrupt:  # one that reached past the CLI's own handling
        os.write(2, b"kcompat: interrupted\n")
        os._exit(130)
    finally:  # the command is done, its output written: a late interrupt changes nothing
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    run()
