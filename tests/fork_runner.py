"""Runs `ctxlm` commands in forked children for the kill tests (tests/test_kill_finetune.py), and kills them.

Starting a fresh Python for each run would cost seconds of imports (torch, scipy, matplotlib) per run, more than a
tiny run trains: this process imports them once, then forks one child per request. Each child runs the command as
the installed program does (`ctxlm.cli.main`: the same files written, the same exit status) and is a process of
its own, which `SIGKILL` ends wherever it is, as `kill -9` would.

Protocol, one JSON object a line: the test writes {"argv": [...], "log": PATH, "wait_for": PATH or null, "after":
seconds or null}; this process forks a child running `ctxlm ARGV...` (stdout and stderr to `log`), waits until
`wait_for` exists (if given), then `after` more seconds, and kills the child if it is still running (never, for
"after" null), and answers {"code": exit status or null if killed, "killed", "ready": seconds from the start to
`wait_for`, "seconds": from the start to the end}. Run with the environment the commands need (CTXLM_DATA,
CTXLM_CACHE, OMP_NUM_THREADS=1, ...): forked children inherit it.
"""

import json
import os
import signal
import sys
import time
import traceback

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: E402, F401 - imported once here rather than in every child
import torch  # noqa: E402
import torch._dynamo  # noqa: E402, F401 - what the first optimizer imports (seconds)

import ctxlm.cli  # noqa: E402, F401
import ctxlm.embed  # noqa: E402, F401
import ctxlm.qa.finetune  # noqa: E402, F401
import ctxlm.qa.zeroshot  # noqa: E402, F401
import ctxlm.transfer.finetune  # noqa: E402, F401
import ctxlm.transfer.metrics  # noqa: E402, F401 - scipy, scikit-learn, seqeval

POLL = 0.002  # seconds between looks at the child and the file it waits for


def child(argv: list[str], log: str) -> None:
    """In the forked child: run `ctxlm ARGV...` and exit with its status, never returning to the loop."""
    code = 3
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        sys.argv = ["ctxlm", *argv]
        from ctxlm.cli import main

        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
    except BaseException:  # noqa: BLE001 - reported in the log, as an exit status of 3
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(request: dict) -> dict:
    sys.stdout.flush()  # nothing buffered goes twice, once from each process
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        child(request["argv"], request["log"])
    status, ready = None, None
    wait_for, after = request.get("wait_for"), request.get("after")

    def exited() -> bool:
        nonlocal status
        if status is None:
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status = code
        return status is not None

    while wait_for is not None and not os.path.exists(wait_for) and not exited():
        time.sleep(POLL)
    ready = time.perf_counter() - start
    if after is not None:
        deadline = time.perf_counter() + after
        while time.perf_counter() < deadline and not exited():
            time.sleep(POLL)
    killed = False
    if after is not None and not exited():
        os.kill(pid, signal.SIGKILL)
        killed = True
    if status is None:
        _, status = os.waitpid(pid, 0)
    code = None if killed else os.waitstatus_to_exitcode(status)
    return {"code": code, "killed": killed, "ready": ready, "seconds": time.perf_counter() - start}


if __name__ == "__main__":
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(run(json.loads(line))), flush=True)
