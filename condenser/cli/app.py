"""The typer application object shared by all command modules, and where failures become exit codes.

Every expected failure (a bad option value, missing data, a bad file, a stale cache) is a CondenserError,
formats.FormatError or runtime.errors.RuntimeError_ (or a click usage error): `CatchingGroup` prints it as
one line `error: ...` on stderr and exits 2. `--debug` (or `$MULTISIZE_DEBUG=1`) prints the traceback too.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from condenser.errors import CondenserError
from condenser.progress import set_quiet
from formats.errors import FormatError
from runtime.errors import RuntimeError_

EXPECTED_ERRORS = (CondenserError, FormatError, RuntimeError_)
# click's UsageError, whether typer vendors click (>= 0.22) or uses the click package (older typer)
UsageError: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
EXIT_USER_ERROR = 2
_flags = {"debug": False}


def set_debug(on: bool) -> None:
    _flags["debug"] = bool(on)


def debug_enabled() -> bool:
    return _flags["debug"] or os.environ.get("MULTISIZE_DEBUG", "") not in ("", "0")


def one_line(exc: BaseException) -> str:
    """The first line of the message (it names the problem and the fix); the rest needs --debug."""
    text = str(exc).strip() or type(exc).__name__
    first, _, rest = text.partition("\n")
    return first + (" (--debug prints the details)" if rest.strip() and not debug_enabled() else "")


def report(exc: BaseException, hint: str = "") -> None:
    """Print an expected failure on stderr: the traceback only under --debug, then one line."""
    if debug_enabled():
        traceback.print_exception(exc)
        print(f"error: {exc}", file=sys.stderr)
    else:
        print(f"error: {one_line(exc)}{hint}", file=sys.stderr)


class CatchingGroup(TyperGroup):
    """The root command: expected failures of any sub-command end as one line and exit code 2."""

    # contexts are click's (vendored by newer typer), hence Any
    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        set_debug(False)  # one in-process invocation (tests) must not inherit the last one's flags
        set_quiet(False)
        return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            if debug_enabled():
                raise
            where = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else ctx.command_path
            print(f"error: {exc.format_message()} (see `{where} --help`)", file=sys.stderr)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except EXPECTED_ERRORS as exc:
            report(exc)
            raise typer.Exit(EXIT_USER_ERROR) from None
        finally:
            set_debug(False)
            set_quiet(False)


def _quiet_option(value: bool) -> bool:
    if value:
        set_quiet(True)
    return value


def _debug_option(value: bool) -> bool:
    if value:
        set_debug(True)
    return value


Quiet = Annotated[bool, typer.Option("--quiet", "-q", callback=_quiet_option,
                                     help="No progress bars or progress lines; results and errors only.")]
Debug = Annotated[bool, typer.Option("--debug", callback=_debug_option,
                                     help="Show the traceback of an error (default: one line, exit code 2).")]

app = typer.Typer(
    name="condenser",
    cls=CatchingGroup,
    help="Condense a dataset once into a nested .mdc file; evaluate every prefix size.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(quiet: Quiet = False, debug: Debug = False) -> None:
    """Condense a dataset once into a nested .mdc file; evaluate every prefix size."""
