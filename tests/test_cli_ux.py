"""The command line's manners: every command's --help shows runnable examples, exit statuses mean one thing each
(0 ok, 1 user error, 2 bug, 130 interrupted), and `ctxlm doctor` reports the environment."""

import errno
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from ctxlm import cli as cli_module
from ctxlm.cli import cli, main

# ------------------------------------------------------------------------------------------------ help examples

_INVOCATION = re.compile(r"(?:^|[\s|;&(])ctxlm\s+(.*)$")  # `ctxlm ...`, after `echo x |`, `-m`, `VAR=x`
_SHELL_ENDS = {"|", "||", "&&", ";", ">", ">>", "<", "2>", "2>&1", "&"}
_CHECKED_TYPES = (click.Choice, click.types.IntParamType, click.types.FloatParamType, click.types.BoolParamType)


def walk(group: click.Group, path: tuple[str, ...] = ()):
    """(path, command) for the group itself and every command under it, subgroups' commands too."""
    yield path, group
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from walk(command, (*path, name))
        else:
            yield (*path, name), command


def example_lines(help_text: str) -> list[str]:
    """The lines of every "Examples:" block (up to its first blank line), comments dropped, continued lines
    (ending in a backslash) joined."""
    lines, block = [], None
    for line in help_text.splitlines():
        if line.strip() == "Examples:":
            block = []
            continue
        if block is None:
            continue
        if not line.strip():
            lines += block
            block = None
        elif not line.strip().startswith("#"):
            if block and block[-1].endswith("\\"):
                block[-1] = block[-1][:-1] + " " + line.strip()
            else:
                block.append(line.strip())
    return lines + (block or [])


def check_example(root: click.Group, line: str) -> tuple[tuple[str, ...] | None, list[str]]:
    """(the command path it runs, its problems): the command exists, every option it names is one of that
    command's, options get their values (of the right type where the type needs no file system), required
    options and arguments are given, no more arguments than the command takes."""
    match = _INVOCATION.search(line)
    if match is None:
        return None, [f"{line!r}: not a ctxlm command line"]
    try:
        tokens = shlex.split(match.group(1), comments=True)
    except ValueError as err:
        return None, [f"{line!r}: not valid shell ({err})"]
    tokens = tokens[:next((i for i, t in enumerate(tokens) if t in _SHELL_ENDS), len(tokens))]
    command, path, parent = root, [], click.Context(root, info_name="ctxlm")
    while isinstance(command, click.Group):
        if not tokens or tokens[0] not in command.commands:
            return None, [f"{line!r}: {' '.join(['ctxlm', *path, *tokens[:1]])} is no command"]
        path.append(tokens.pop(0))
        command = command.commands[path[-1]]
    ctx = click.Context(command, info_name=path[-1], parent=parent)
    params = command.get_params(ctx)
    names = {opt.split("=")[0] for p in params for opt in (*p.opts, *p.secondary_opts)}
    problems = [f"{line!r}: ctxlm {' '.join(path)} has no option {token.split('=')[0]}"
                for token in tokens if token.startswith("--") and token.split("=")[0] not in names]
    if problems:
        return tuple(path), problems
    try:
        opts, args, _ = command.make_parser(ctx).parse_args(args=list(tokens))
    except click.UsageError as err:
        return tuple(path), [f"{line!r}: {err.format_message()}"]
    for param in params:  # the parser put the arguments in opts too, and left any extra ones in args
        if param.required and opts.get(param.name) in (None, ()):
            name = param.opts[-1] if isinstance(param, click.Option) else param.human_readable_name
            problems.append(f"{line!r}: missing the required {name}")
        if isinstance(param, click.Option) and isinstance(param.type, _CHECKED_TYPES) and param.name in opts:
            values = opts[param.name] if param.multiple else [opts[param.name]]
            for value in values:
                try:
                    param.type.convert(value, param, ctx)
                except click.BadParameter as err:
                    problems.append(f"{line!r}: {param.opts[-1]} {value!r}: {err.format_message()}")
    if args:
        problems.append(f"{line!r}: extra arguments {args}")
    return tuple(path), problems


def help_problems(root: click.Group) -> list[str]:
    """Every command (and group) under `root` whose --help has no example of itself or a wrong example."""
    problems = []
    for path, command in walk(root):
        result = CliRunner().invoke(root, [*path, "--help"], prog_name="ctxlm")
        name = " ".join(["ctxlm", *path])
        if result.exit_code != 0:
            problems.append(f"{name} --help: exit status {result.exit_code}: {result.output}")
            continue
        if "Examples:" not in result.output:
            problems.append(f"{name} --help: no Examples:")
            continue
        lines = example_lines(result.output)
        runs = []
        for line in lines:
            ran, found = check_example(root, line)
            runs.append(ran)
            problems += [f"{name} --help: {problem}" for problem in found]
        if isinstance(command, click.Group) and not lines:
            problems.append(f"{name} --help: no example lines")
        if not isinstance(command, click.Group) and path not in runs:
            problems.append(f"{name} --help: no example runs {name}")
    return problems


def test_every_command_has_examples_that_run():
    commands = [path for path, command in walk(cli) if not isinstance(command, click.Group)]
    assert len(commands) >= 12 and ("doctor",) in commands and ("zeroshot",) in commands  # registered ones too
    assert help_problems(cli) == []


def test_the_example_check_catches_wrong_examples():
    @click.command(epilog="\b\nExamples:\n  ctxlm good --real 1 --bogus 2\n"
                          "  ctxlm good --count many\n  ctxlm good --count 3 too many\n"
                          "  ctxlm good --count\n  ctxlm nothing --real 1\n  ctxlm good --real x \\\n"
                          "      --mode fast\n  echo hi | ctxlm good --flag > out.txt")
    @click.argument("name", required=False)
    @click.option("--real")
    @click.option("--count", type=int)
    @click.option("--mode", type=click.Choice(["slow"]))
    @click.option("--flag", is_flag=True)
    def good(name, real, count, mode, flag):
        """A command with wrong examples."""

    @click.command()
    @click.option("--needed", required=True)
    def bare(needed):
        """A command with no examples."""

    @click.group(commands={"good": good, "bare": bare})
    def root():
        """A group.

        \b
        Examples:
          ctxlm bare --needed 1
          ctxlm bare
        """

    problems = "\n".join(help_problems(root))
    for fragment in ["has no option --bogus", "'many'", "extra arguments ['many']", "--count' requires an argument",
                     "ctxlm nothing is no command", "--mode 'fast'", "ctxlm bare --help: no Examples:",
                     "missing the required --needed"]:
        assert fragment in problems, problems
    assert "--flag" not in problems and "out.txt" not in problems and "ctxlm bare --needed 1" not in problems
    assert len(problems.splitlines()) == 8, problems


# -------------------------------------------------------------------------------------------------- exit codes


def run_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["ctxlm", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def fail_with(monkeypatch, exception: BaseException) -> None:
    """`ctxlm info` raises `exception` instead of loading a model."""
    def boom(model):
        raise exception

    monkeypatch.setattr(cli.commands["info"], "callback", boom)


def test_help_documents_the_exit_statuses_and_exits_0(monkeypatch, capsys):
    code, out, _ = run_main(monkeypatch, capsys, "--help")
    assert code == 0
    assert re.search(r"Exit status:\s+0 +success\s+1 +user error.*\s+2 +internal error.*\s+130 +interrupted", out)
    assert run_main(monkeypatch, capsys, "info", "--help")[0] == 0
    assert run_main(monkeypatch, capsys, "--version")[0] == 0


@pytest.mark.parametrize("args", [["info", "--bogus", "x"], ["info"], ["no-such-command"],
                                  ["generate", "m", "--max-new-tokens", "many"],
                                  ["predict", "m", "--input", "/no/such/file.txt"]])
def test_usage_errors_exit_1_not_2(monkeypatch, capsys, args):
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 1, err
    assert "Traceback" not in err


def test_a_missing_file_exits_1(monkeypatch, capsys, tmp_path):
    code, _, err = run_main(monkeypatch, capsys, "info", tmp_path / "no-such-model")
    assert code == 1 and err.startswith("error: ") and "no-such-model" in err and "Traceback" not in err


def test_a_bug_exits_2_with_its_traceback_and_the_version(monkeypatch, capsys):
    fail_with(monkeypatch, RuntimeError("an injected failure"))
    code, _, err = run_main(monkeypatch, capsys, "info", "x")
    assert code == 2
    assert "Traceback" in err and "RuntimeError: an injected failure" in err
    last = err.rstrip().splitlines()[-1]
    from ctxlm.doctor import ctxlm_version

    assert "bug in ctxlm" in last and ctxlm_version() in last and "ctxlm doctor" in last


def test_a_user_error_raised_inside_a_command_exits_1(monkeypatch, capsys):
    from ctxlm.errors import UserError

    fail_with(monkeypatch, UserError("x: not a model"))
    assert run_main(monkeypatch, capsys, "info", "x") == (1, "", "error: x: not a model\n")


@pytest.mark.parametrize("exception, says", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "--batch-size"),
    (MemoryError(), "--grad-checkpoint"),
    (OSError(errno.ENOSPC, "No space left on device", "runs/x/metrics.jsonl"), "--resume"),
], ids=["gpu-memory", "memory", "disk-full"])
def test_running_out_of_memory_or_disk_exits_1_with_what_to_change(monkeypatch, capsys, exception, says):
    fail_with(monkeypatch, exception)
    code, _, err = run_main(monkeypatch, capsys, "info", "x")
    assert code == 1 and err.startswith("error: ") and says in err, err
    assert "Traceback" not in err and "bug" not in err


def test_ctrl_c_exits_130(monkeypatch, capsys):
    fail_with(monkeypatch, KeyboardInterrupt())
    code, _, err = run_main(monkeypatch, capsys, "info", "x")
    assert code == 130 and "interrupted" in err and "Traceback" not in err


def test_a_closed_output_pipe_is_no_bug(monkeypatch, capsys):
    fail_with(monkeypatch, BrokenPipeError(32, "Broken pipe"))
    code, _, err = run_main(monkeypatch, capsys, "info", "x")
    assert code == 1 and "bug" not in err and "Traceback" not in err


def test_the_installed_program_exits_with_these_statuses(tmp_path):
    """The real entry point, in its own process: a usage error 1 (click alone would say 2), a missing file 1."""
    program = Path(sys.executable).with_name("ctxlm")
    command = [str(program)] if program.exists() else [sys.executable, "-m", "ctxlm"]
    env = {**os.environ, "CTXLM_DATA": str(tmp_path)}
    bad = subprocess.run([*command, "pretrain", "--no-such-option"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "No such option" in bad.stderr and "Traceback" not in bad.stderr
    missing = subprocess.run([*command, "pretrain", "--data", tmp_path / "missing.txt", "--out", tmp_path / "run"],
                             capture_output=True, text=True, env=env)
    assert missing.returncode == 1 and "missing.txt" in missing.stderr and "Traceback" not in missing.stderr


# ------------------------------------------------------------------------------------------------------ doctor


@pytest.fixture
def fake_data(monkeypatch, tmp_path):
    (tmp_path / "wikitext2").mkdir()
    (tmp_path / "my_corpus").mkdir()
    monkeypatch.setenv("CTXLM_DATA", str(tmp_path))
    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))
    from ctxlm.doctor import TORCHRUN_VARIABLES

    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.mark.default_precision
def test_doctor_reports_the_environment(monkeypatch, capsys, fake_data):
    import torch

    from ctxlm.doctor import report

    info = report()
    assert set(info) == {"ctxlm", "python", "torch", "packages", "data", "caches", "environment"}
    assert not [section for section, values in info.items() if "error" in values]
    assert info["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert info["torch"]["version"] == torch.__version__
    assert info["torch"]["cuda"]["available"] == torch.cuda.is_available()
    assert info["torch"]["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["torch"]["threads"]["intra_op"] == torch.get_num_threads()
    assert {"tokenizers", "safetensors", "numpy", "transformers", "sentence-transformers", "h5py",
            "hypothesis"} <= set(info["packages"])
    assert info["packages"]["numpy"] == __import__("numpy").__version__
    data = info["data"]
    assert data["root"] == str(fake_data) and data["source"] == "$CTXLM_DATA" and data["exists"]
    assert data["present"] == ["wikitext2"] and "sst2" in data["missing"] and data["other"] == ["my_corpus"]
    assert info["caches"]["ctxlm"]["path"] == str(fake_data / "cache")
    assert info["environment"]["torchrun"] == {} and not info["environment"]["launched"]
    assert info["environment"]["variables"]["CTXLM_DATA"] == str(fake_data)


def test_doctor_knows_every_data_set_a_task_reads():
    from ctxlm.doctor import known_datasets
    from ctxlm.transfer.data import TASKS

    assert {"wikitext2", "squad_v1", *TASKS} <= set(known_datasets())


@pytest.mark.default_precision
def test_doctor_says_when_a_package_is_missing(monkeypatch):
    from ctxlm import doctor

    monkeypatch.setattr(doctor, "OPTIONAL_PACKAGES", (*doctor.OPTIONAL_PACKAGES, "no-such-package"))
    info = doctor.report()
    assert info["packages"]["no-such-package"] == "not installed"
    assert re.search(r"\n  no-such-package +not installed\n", doctor.format_report(info))


@pytest.mark.default_precision
def test_one_failing_section_does_not_hide_the_others(monkeypatch):
    from ctxlm import doctor

    monkeypatch.setattr(doctor, "_data", lambda: 1 / 0)
    info = doctor.report()
    assert info["data"] == {"error": "ZeroDivisionError: division by zero"} and "version" in info["torch"]
    assert "  error" in doctor.format_report(info)


@pytest.mark.default_precision
def test_doctor_command_text_and_json(monkeypatch, capsys, fake_data):
    code, out, _ = run_main(monkeypatch, capsys, "doctor")
    assert code == 0
    for heading in ("ctxlm", "python", "torch", "packages", "data", "caches", "environment"):
        assert f"\n{heading}\n" in f"\n{out}"
    assert re.search(rf"  folder +{re.escape(str(fake_data))} \(\$CTXLM_DATA\)", out)
    assert re.search(r"  present +wikitext2\n", out) and "my_corpus" in out
    code, out, _ = run_main(monkeypatch, capsys, "doctor", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["data"]["present"] == ["wikitext2"] and info["ctxlm"]["version"]


@pytest.mark.default_precision
def test_doctor_runs_under_torchrun_variables(monkeypatch, capsys, fake_data):
    """A stale WORLD_SIZE in the shell stops every other command but pretrain; doctor must show it."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "1")
    assert run_main(monkeypatch, capsys, "info", "x")[0] == 1
    code, out, _ = run_main(monkeypatch, capsys, "doctor")
    assert code == 0 and re.search(r"torchrun +RANK=1 WORLD_SIZE=4 \(several processes", out)


def test_main_module_exposes_the_exit_statuses():
    assert (cli_module.EXIT_OK, cli_module.EXIT_USER_ERROR, cli_module.EXIT_INTERNAL_ERROR,
            cli_module.EXIT_INTERRUPTED) == (0, 1, 2, 130)


def test_doctor_text_names_each_gpu():
    """The CUDA branch, which a CPU-only machine never reaches, on a report as a GPU machine gives it."""
    from ctxlm.doctor import format_report

    torch_section = {"version": "2.5.0+cu124", "mps": {"available": False, "built": False},
                     "cuda": {"available": True, "built_with": "12.4", "devices": [
                         {"index": 0, "name": "NVIDIA H100", "capability": "9.0", "memory_gib": 79.1, "bf16": True},
                         {"index": 1, "name": "Tesla T4", "capability": "7.5", "memory_gib": 14.6, "bf16": False}]},
                     "cpu": {"capability": "AVX2", "avx512_bf16": False, "amx_tile": False, "bf16_fast": False},
                     "threads": {"intra_op": 8, "inter_op": 8, "cpu_count": 16, "usable_cpus": None}}
    text = format_report({"torch": torch_section})
    assert re.search(r"cuda +available \(CUDA 12.4\), 2 device\(s\)", text)
    assert "cuda:0  NVIDIA H100, compute 9.0, 79.1 GiB, bf16 yes" in text and "Tesla T4" in text
    assert re.search(r"cpu +AVX2 kernels; bf16 no bf16 instructions", text)
    assert re.search(r"threads +8 intra-op, 8 inter-op; 16 CPUs", text)
