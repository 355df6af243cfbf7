"""The typer application object shared by all command modules."""

import typer

app = typer.Typer(
    name="condenser",
    help="Condense a dataset once into a nested .mdc file; evaluate every prefix size.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Condense a dataset once into a nested .mdc file; evaluate every prefix size."""
