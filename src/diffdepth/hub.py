"""Resolve a checkpoint given as a local folder or a Hugging Face hub id."""
from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Optional, Sequence

from .errors import CheckpointError

#: how the command at hand takes a local checkpoint instead of a hub id (``train`` sets its own)
LOCAL_HINT = contextvars.ContextVar("diffdepth_local_checkpoint_hint",
                                    default="pass a local folder with --checkpoint PATH")


def resolve_checkpoint(source: str | os.PathLike, allow_patterns: Optional[Sequence[str]] = None) -> Path:
    """Return a local folder (or file) for ``source``.

    A path that exists is returned as is. Otherwise ``source`` is treated as a hub id
    and downloaded (or taken from the local hub cache). Any failure becomes one
    :class:`CheckpointError` line naming the id and telling the user to pass a local path.
    """
    path = Path(source).expanduser()
    if path.exists():
        return path
    text = str(source)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise CheckpointError(f"checkpoint {text!r} does not exist — pass an existing folder or file, or a hub id like owner/name")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id=text, allow_patterns=list(allow_patterns) if allow_patterns else None)
    except Exception as err:  # network errors, missing repos, gated repos ...
        reason = type(err).__name__
        raise CheckpointError(
            f"could not download {text} from the Hugging Face hub ({reason}; offline?) — "
            f"{LOCAL_HINT.get()} (e.g. one made by `diffdepth make-tiny`)"
        ) from None
    return Path(local)
