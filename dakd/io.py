"""Atomic file writes: a reader (a resumed run, a table, another process) never sees half a file.

One helper for every kind of output: text (`write_text`), JSON (`write_json`), tensors
(`save_tensor`) and whole folders (`atomic_folder`). Each writes a temporary sibling and renames
it into place with `os.replace`, which is atomic on POSIX file systems.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary sibling and a rename; parents are
    created. The temporary name carries the process id, so processes writing the same file never
    share one. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as indented JSON (non-JSON values through ``str``) atomically (`write_text`)."""
    return write_text(path, json.dumps(obj, indent=1, default=str))


def save_tensor(t, path: str | Path) -> Path:
    """``torch.save`` through a temporary file and a rename, so a killed run never leaves half a
    file where a later run would read it."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    torch.save(t, tmp)
    os.replace(tmp, path)
    return path


def atomic_folder(build, out: str | Path) -> Path:
    """Create the folder ``out`` by ``build(tmp)`` in a temporary sibling, then one rename; an
    existing ``out`` is returned untouched. An interrupted build leaves no folder a later load
    would trust (the temporary one is removed on any exception)."""
    out = Path(out)
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        build(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
