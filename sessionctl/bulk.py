"""The bulk commands, ``import`` and ``cleanup``: sessions by the thousand.

What they print for people stays readable however many sessions they
touch: a summary, and at most ``BULK_SHOWN`` of the items behind it
(records skipped, lines unreadable, ids removed), then "… and N more
(--verbose for all)". ``--verbose`` lists every item, ``-q``/``--quiet``
prints nothing but errors, ``--json`` always has everything.

An import runs page by page, and a signal stops it between pages with an
exact count of what was committed (see ``import_all``).
"""

from __future__ import annotations

import sys
from typing import Any

from sessionctl import render
from sessionctl.client import Client
from sessionctl.handlers import emit, plural, warn_damaged
from sessionctl.importing import add_up
from sessionctl.registry import (
    BULK_SHOWN,
    EXIT_FAILED,
    EXIT_OK,
    Args,
    Interrupted,
    UsageError,
)
from sessiond.model import DEFAULT_USER, now_us
from sessiond.protocol import ImportResult


def bulk_output(args: Args) -> None:
    """Refuse what contradicts itself among -q/--quiet, --verbose and --json."""
    if args.quiet and args.verbose:
        raise UsageError("-q/--quiet and --verbose contradict each other: give one")
    if args.quiet and args.json:
        raise UsageError("-q/--quiet prints nothing and --json prints everything: give one")


def listed(args: Args, lines: list[str], what: str) -> list[str]:
    """``lines`` for people: with ``--verbose`` all of them, else the first
    ``BULK_SHOWN`` and one saying how many ``what`` were left out."""
    if args.verbose or len(lines) <= BULK_SHOWN:
        return lines
    return lines[:BULK_SHOWN] + [
        f"  {_ellipsis()} and {len(lines) - BULK_SHOWN} more {what} (--verbose for all)"
    ]


def _ellipsis() -> str:
    try:
        "\u2026".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "..."
    return "\u2026"


def prepare_cleanup(args: Args) -> None:
    bulk_output(args)
    args.before_us = None
    if args.before is not None:
        from sessiond.timeparse import parse_before

        try:
            args.before_us = parse_before(args.before, now_us())
        except ValueError as exc:
            raise UsageError(f"--before: {exc}") from None


def prepare_import(args: Args) -> None:
    bulk_output(args)
    from pathlib import Path

    from sessiond.legacy import read_sessions

    try:
        args.loaded = read_sessions(Path(args.file))
    except OSError as exc:
        raise UsageError(f"{exc.strerror}; give the path of a data.jsonl or an export") from None


class _StopNow(Exception):
    """A second SIGINT or SIGTERM during an import: stop at once."""


class _Signals:
    """SIGINT and SIGTERM while an import runs: the first is noted, and the
    import stops once the page in flight is answered, so that the count of
    committed sessions is exact; a second stops it at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._before: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        import signal

        for signum in (signal.SIGINT, signal.SIGTERM):
            self._before[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for signum, handler in self._before.items():
            signal.signal(signum, handler)

    def _note(self, signum: int, frame: object) -> None:
        if self.received is not None:
            raise _StopNow
        self.received = signum


def import_all(c: Client, args: Args) -> ImportResult:
    """Every page of ``args.loaded`` imported. A signal stops it with
    ``Interrupted``, which says how far it got and that a rerun is safe,
    and whose exit status is 128 + the signal's number, as a shell reports
    a process it killed."""
    import signal

    sessions = args.loaded.sessions
    total = ImportResult(reasons=[])
    forced = False
    with _Signals() as signals:
        try:
            if signals.received is None:
                for part in c.import_pages(sessions):
                    add_up(total, part)
                    if signals.received is not None:
                        break
        except _StopNow:
            forced = True
    if signals.received is None:
        return total
    name = signal.Signals(signals.received).name
    committed = total.imported + total.updated
    done = total.imported + total.updated + total.skipped
    how_far = (
        f"{plural(committed, 'session')} {'was' if committed == 1 else 'were'} committed "
        f"(imported {total.imported}, updated {total.updated}; {total.skipped} skipped) "
        f"of {len(sessions)}"
    )
    if forced:
        how_far = (f"at least {how_far}; a second signal cut the page in flight short, and "
                   f"it may have been committed too")
    elif done < len(sessions):
        how_far += f"; the other {len(sessions) - done} were not sent"
    raise Interrupted(
        f"import interrupted by {name}: {how_far}. Importing {args.file} again is safe "
        f"(a session already there is replaced only by a newer version of itself): a "
        f"rerun completes the import",
        128 + signals.received,
    )


def h_import(c: Client, args: Args) -> int:
    loaded = args.loaded
    result = import_all(c, args)
    # Records no request could carry are skipped here, as the daemon skips
    # those its rules refuse.
    skipped = result.skipped + len(loaded.refused)
    # What the file holds that does not come in as it is written: said, as
    # the migration's log says it.
    without_user = loaded.without_user
    reasons = loaded.refused + result.reasons
    data = {
        "imported": result.imported,
        "updated": result.updated,
        "skipped": skipped,
        "unreadable": len(loaded.problems),
        "already_expired": result.already_expired,
        "repeated_ids": loaded.repeated,
        "without_user": without_user,
        "reasons": reasons,
        "problems": loaded.problems,
    }

    def human() -> str:
        expired = result.already_expired
        lines = [
            f"imported {result.imported}, updated {result.updated}, skipped {skipped}, "
            f"unreadable {len(loaded.problems)} ({loaded.format} from {args.file})"
        ]
        if expired:
            lines.append(
                f"  {expired} of them already expired: kept for expired_retention from now"
            )
        if loaded.repeated:
            lines.append(
                f"  {plural(loaded.repeated, 'record')} repeated the id of an earlier one: "
                f"the last record of each id was taken, in the place of its first"
            )
        if without_user:
            lines.append(
                f"  {plural(without_user, 'record')} had no user: given user {DEFAULT_USER}, "
                f"as the legacy tool did"
            )
        lines += listed(args, [f"  skipped {r}" for r in reasons], "skipped")
        lines += listed(args, [f"  unreadable: {p}" for p in loaded.problems], "unreadable")
        # The reasons quote ids and lines from the file, whatever it holds.
        return "\n".join(render.escape_message(line) for line in lines)

    if not args.quiet:
        emit(args, data, human)
    if loaded.problems:
        count = len(loaded.problems)
        if args.quiet:
            where = "run it without --quiet to list them"
        elif args.json or args.verbose or count <= BULK_SHOWN:
            where = "listed above"
        else:
            where = f"the first {BULK_SHOWN} listed above; --verbose lists all"
        sys.stderr.write(render.escape_message(
            f"sessionctl: error: {plural(count, 'unreadable record')} in {args.file} "
            f"{'was' if count == 1 else 'were'} not imported ({where})"
        ) + "\n")
        return EXIT_FAILED
    return EXIT_OK


def h_cleanup(c: Client, args: Args) -> int:
    import msgspec

    from sessionctl.results import to_datetime

    before = None if args.before_us is None else to_datetime(args.before_us)
    r = c.cleanup(before=before, dry_run=args.dry_run)

    def human() -> str:
        verb = "would remove" if r.dry_run else "removed"
        lines = [f"{verb} {plural(r.removed_count, 'session')}, {r.remaining_count} remaining"]
        lines += listed(args, [f"  {sid}" for sid in r.removed_ids], "ids")
        if r.damaged:
            # Whether they were due cannot be told: neither removed nor kept on purpose.
            lines.append(f"passed over {plural(len(r.damaged), 'session')} the engine holds "
                         f"damaged:")
            lines += listed(args, [f"  {why}" for why in r.damaged], "damaged")
        return "\n".join(render.escape_message(line) for line in lines)

    if not args.quiet:
        emit(args, msgspec.to_builtins(r), human)
    warn_damaged(r.damaged)
    return EXIT_OK
