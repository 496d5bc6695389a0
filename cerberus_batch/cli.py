"""The `cerberus-batch` command line."""

from __future__ import annotations

import click

from cerberus_batch import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cerberus-batch")
def main() -> None:
    """Run the Cerberus histology model over cohorts of whole-slide images."""


if __name__ == "__main__":
    main()
