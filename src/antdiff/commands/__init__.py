"""Sub-commands of the ``antdiff`` CLI (upper layer; the core never imports these)."""

from __future__ import annotations

from pathlib import Path


def refuse_to_replace(path: str | Path, what: str, force: bool) -> None:
    """Stop before any work when ``path`` holds an earlier result that the command would
    overwrite — samples, reference statistics, an affinity matrix: minutes to hours of compute —
    unless the user passed ``--force``."""
    if Path(path).exists() and not force:
        raise ValueError(
            f"{path} already holds {what}; give another --out, or pass --force to replace it"
        )
