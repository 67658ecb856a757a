"""What `evaluate` scores: the labelled images, as indices into the bundle's labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_sdk.bundle import Bundle

from . import data as data_mod
from .errors import EvaluateError


@dataclass
class EvalData:
    items: list[tuple[Path, int]]
    description: str  # where the images came from, for the report
    split: str  # "test" (the bundle's own test split) or "folder" (every image of the folder)


def resolve_data(bundle: Bundle, data: str) -> EvalData:
    """The labelled images to score, with labels as indices into the bundle's labels.

    ``digits`` (or any folder the bundle was trained on) means the bundle's own
    test split, rebuilt from the manifest; any other folder is used whole, its
    class folder names matched to the bundle's labels (a subset is fine).
    """
    info = bundle.manifest.data
    if info is not None and _same_source(data, info.source):
        try:
            sp = data_mod.split_from_info(info)
        except data_mod.DataError as e:
            raise EvaluateError(f"cannot rebuild the bundle's data split: {e}") from None
        if sp.labels != bundle.labels:
            raise EvaluateError(f"{data}: classes {sp.labels} do not match the bundle's labels {bundle.labels}")
        if not sp.test:
            raise EvaluateError(f"{data}: the bundle's test split is empty")
        return EvalData(list(sp.test), f"{info.source} (the bundle's test split, seed {info.seed})", "test")
    try:
        classes, items = data_mod.list_folder(data_mod.resolve(data))
    except data_mod.DataError as e:
        raise EvaluateError(str(e)) from None
    unknown = [c for c in classes if c not in bundle.labels]
    if unknown:
        raise EvaluateError(
            f"{data}: class folder(s) {', '.join(unknown[:10])} are not labels of the bundle "
            f"(labels: {', '.join(bundle.labels[:20])}{'…' if len(bundle.labels) > 20 else ''})"
        )
    index = {c: bundle.labels.index(c) for c in classes}
    return EvalData([(p, index[classes[y]]) for p, y in items], str(data), "folder")


def _same_source(data: str, source: str) -> bool:
    if data == source:
        return True
    if data in data_mod.BUILTIN or source in data_mod.BUILTIN:
        return False
    try:
        return Path(data).expanduser().resolve() == Path(source).expanduser().resolve()
    except OSError:
        return False
