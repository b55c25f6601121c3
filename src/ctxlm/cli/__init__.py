"""`ctxlm` command line: a thin shell over the Python API.

Exit status (see `main()`): 0 success; 1 a user error (bad paths, values, files, options: one line, no traceback);
2 an internal error, i.e. a bug (the traceback, then one line saying so, with the version); 130 interrupted,
a training run keeping its last checkpoint.

Each command group has its module (pretrain, finetune, embed, generate, models, serve, bench, doctor); every command
parses its options, calls one function of the Python API (`ctxlm.jobs`, `ctxlm.load`, ...) and prints.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import traceback

import click

from ctxlm import distributed
from ctxlm.cli import bench, doctor, embed, finetune, generate, models, pretrain, serve
from ctxlm.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ctxlm")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Contextual language models (GPT, GPT-2, BERT, ...) and transfer learning.

    \b
    Examples:
      ctxlm pretrain --model gpt2 --data wikitext2 --out runs/gpt2-small --max-minutes 5
      ctxlm generate runs/gpt2-small "The history of" --max-new-tokens 40 --top-k 40 --temperature 0.8
      ctxlm convert path/to/hf-gpt2-folder models/gpt2
      ctxlm info runs/gpt2-small
      ctxlm finetune --model minilm --task sst2 --strategy features --train-size 2000 --out runs/sst2
      echo "a gorgeous, witty movie" | ctxlm predict runs/sst2
      ctxlm doctor          # versions, devices, threads, data and cache folders: paste it into a bug report

    \b
    Exit status:
      0    success
      1    user error: a bad option, path, value or file (one line on stderr, no traceback)
      2    internal error: a bug in ctxlm (a traceback, then a line with the version to report)
      130  interrupted (Ctrl-C); a training run keeps its last checkpoint (continue with --resume)
    """
    if distributed.launched() and ctx.invoked_subcommand not in ("pretrain", "doctor"):
        raise UserError(f"only `ctxlm pretrain` runs under torchrun with several processes; start "
                        f"`ctxlm {ctx.invoked_subcommand}` as a single process")


def _register_commands() -> None:
    for module in (pretrain, finetune, embed, generate, models, serve, bench, doctor):
        for command in module.COMMANDS:
            cli.add_command(command)


_register_commands()


EXIT_OK, EXIT_USER_ERROR, EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def main() -> None:
    """The `ctxlm` program: runs the command, then exits with the status `ctxlm --help` documents."""
    try:
        result = cli.main(standalone_mode=False)  # returns --help's exit code, or the command's return value
        sys.exit(result if isinstance(result, int) else EXIT_OK)
    except UserError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(EXIT_USER_ERROR)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        click.echo("interrupted; the last checkpoint is kept (continue with --resume)", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as err:  # click's usage errors would exit 2, which here means a bug
        err.show()
        sys.exit(EXIT_USER_ERROR)
    except BrokenPipeError:  # the output's reader went away (`ctxlm predict ... | head`): nothing to report
        _quiet_stdout()
        sys.exit(EXIT_USER_ERROR)
    except Exception as err:
        if (limit := _out_of_resources(err)) is not None:  # the machine's limit, not a bug: say what to change
            click.echo(f"error: {limit}", err=True)
            sys.exit(EXIT_USER_ERROR)
        traceback.print_exc()
        click.echo(f"error: internal error: this is a bug in ctxlm {_versions()}, not a problem with your input; "
                   "please report it with the traceback above and the output of `ctxlm doctor`", err=True)
        sys.exit(EXIT_INTERNAL_ERROR)


def _out_of_resources(err: Exception) -> str | None:
    """What to do about running out of memory or disk space, or None for any other exception."""
    torch = sys.modules.get("torch")
    if isinstance(err, MemoryError) or (torch is not None and isinstance(err, torch.OutOfMemoryError)):
        return (f"out of memory ({str(err).splitlines()[0] if str(err) else type(err).__name__}): use a smaller "
                "--batch-size (with --grad-accum to keep the batch), a shorter --block-size, --grad-checkpoint or "
                "--precision bf16")
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return f"no space left on device ({err}): free some space, then continue with --resume"
    return None


def _versions() -> str:
    """ctxlm's version, with Python's and torch's, for the line that reports a bug."""
    try:
        from ctxlm.doctor import ctxlm_version

        version = ctxlm_version()
    except Exception:  # noqa: BLE001 - the bug report must come out whatever else is broken
        version = "(version unknown)"
    torch = sys.modules.get("torch")
    return f"{version} (Python {sys.version.split()[0]}" + (f", torch {torch.__version__})" if torch else ")")


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush of the closed pipe does not fail again."""
    with contextlib.suppress(OSError, ValueError):  # no file descriptor (a captured stream): nothing to flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
