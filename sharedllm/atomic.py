"""Files written atomically: the data goes to a temporary file beside the target, which a rename then puts in
place, so a reader (a report, another rank tokenising the same document, the next session) never sees half a file,
even when the writer is killed."""

import os
from pathlib import Path


def write_atomic(path, data: bytes | str) -> Path:
    """Write `data` (str: UTF-8, newlines as given) to `path`, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: concurrent writers never share one
    try:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:  # a full disk, Ctrl-C: no stray temporary file is left beside the target
        tmp.unlink(missing_ok=True)
        raise
    return path
