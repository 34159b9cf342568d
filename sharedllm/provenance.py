"""Where a result came from, written the same way into every result JSON (`sharedllm train`, `eval`, `bench`):

    {"hardware": {"device", "cpu", "gpu", "cpu_count", "threads", "dtype", "torch", "transformers", "python",
                  "platform", ...command-specific extras},
     "command": the command line, "git_commit": the checkout's commit (None outside a git checkout),
     "git_dirty": uncommitted changes to tracked files outside results/, "created": local time}

and `write_json`, the atomic write every result file goes through (a reader never sees half a file).
"""

import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from sharedllm.atomic import write_atomic

REPO = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def machine(device) -> str:
    """The machine a trial ran on, as a trial journal tags it: the GPU's name on a GPU, else the CPU's (the name
    the report prints for a result's hardware block)."""
    import torch

    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def hardware(device, dtype: str | None = None, **extra) -> dict:
    """The machine and software a result was measured with; `extra`: what only one command knows (attention
    backend, distributed processes, ...)."""
    import torch
    import transformers

    device = torch.device(device)
    return {
        "device": str(device),
        "cpu": cpu_name(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "dtype": dtype,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **extra,
    }


def command_line() -> str:
    """The command as typed, as far as it can be rebuilt (`python -m sharedllm ...` shows as such)."""
    program = sys.argv[0]
    program = f"python -m {Path(program).parent.name}" if program.endswith("__main__.py") else Path(program).name
    return " ".join([program, shlex.join(sys.argv[1:])])


def git_commit(repo: Path = REPO) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout the package runs from; (None, None) when it is not one (an installed wheel)."""
    def git(*args) -> str | None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
            if done.returncode == 0:
                return done.stdout.strip()
        return None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    # results/ is what evaluations write: a grid rewriting its own cells does not make the code that runs it dirty
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results")
    return commit, None if status is None else bool(status)


_started_at: tuple[str | None, bool | None] | None = None  # (commit, dirty) when the run started, once pinned


def pin_commit() -> None:
    """Name the checkout's commit as it is now in every result this process records: a long run (an hour-long 128K
    evaluation, a training run) outlives commits made while it runs, and its results come from the code it
    started with."""
    global _started_at
    _started_at = git_commit()


def record(device, dtype: str | None = None, command: str | None = None, **hardware_extra) -> dict:
    """The provenance keys of a result JSON (see the module docstring); merge them into the result."""
    commit, dirty = _started_at or git_commit()
    return {
        "hardware": hardware(device, dtype, **hardware_extra),
        "command": command or command_line(),
        "git_commit": commit,
        "git_dirty": dirty,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def read_json(path):
    """A result file as `sharedllm report` / `compare` read it: a file that is not JSON is the user's to move, so it
    is named in one line (`InputError`), not a traceback."""
    from sharedllm.cli import InputError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is not a result file (not JSON: {err}); move it out of {Path(path).parent}") from None


def write_json(path, value, indent: int = 1) -> Path:
    """Write `value` as JSON to `path` atomically (`atomic.write_atomic`), creating its folder."""
    return write_atomic(path, json.dumps(value, indent=indent, default=str))
