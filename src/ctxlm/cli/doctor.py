"""`ctxlm doctor`: the environment in one report (`ctxlm.doctor` gathers and formats it)."""

from __future__ import annotations

import json

import click

from ctxlm.doctor import format_report, report


@click.command(epilog="""\b
Examples:
  ctxlm doctor                          # paste the report into a bug report
  ctxlm doctor --json > doctor.json     # the same as one JSON object
  CTXLM_DATA=~/datasets ctxlm doctor    # which data sets a run would find there
""")
@click.option("--json", "as_json", is_flag=True, help="print the report as one JSON object")
def doctor(as_json) -> None:
    """Report the environment: ctxlm, Python, torch (CUDA, MPS, CPU features, threads), package versions, the
    data folder and its data sets, cache folders, torchrun variables."""
    info = report()
    click.echo(json.dumps(info, indent=2) if as_json else format_report(info))


COMMANDS = [doctor]
