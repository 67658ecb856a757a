"""The model bundle: a directory with a manifest, checked on every load.

A bundle is written atomically (a temp dir beside it, then a rename) and never
edited in place: tools that add to it (``quantize``) write a new one over it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .detection import DetectionSpec
from .errors import BundleError
from .preprocess import InputSpec, PreprocessSpec, QuantParams
from .scores import DeferralParams, OODParams

SCHEMA_VERSION = "1.0"
Task = Literal["classify", "detect"]
MANIFEST = "manifest.json"
LABELS = "labels.txt"


class ModelFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    sha256: str = ""
    format: Literal["keras", "tflite-int8", "tflite-fp32"]
    input_quant: QuantParams | None = None
    output_quant: QuantParams | None = None

    @field_validator("file")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not v or "/" in v or "\\" in v or v.startswith("."):
            raise ValueError(f"model file must be a plain file name inside the bundle, not {v!r}")
        return v


class Routing(BaseModel):
    """When the edge answer is good enough (edge_sdk.scores): the metric and its threshold, the temperature the
    logits are divided by before any score, the deferral model (metric ``deferral``), the out-of-distribution
    score, and in ``calibration`` how the threshold was chosen (estimate, bound, n, delta). Bundles written
    before these fields load with T = 1, no deferral model and no out-of-distribution score."""

    model_config = ConfigDict(extra="forbid")
    metric: Literal["max_prob", "margin", "entropy", "deferral", "band_mass", "band_count", "top_entropy"] = "max_prob"
    threshold: float = 0.5
    temperature: float = Field(default=1.0, gt=0)
    calibration: dict[str, Any] | None = None
    deferral: DeferralParams | None = None
    ood: OODParams | None = None

    @model_validator(mode="after")
    def _deferral_present(self) -> Routing:
        if self.metric == "deferral" and self.deferral is None:
            raise ValueError("metric 'deferral' needs the deferral model's parameters")
        return self


class DataInfo(BaseModel):
    """Where the training data came from, so later tools can rebuild the same split."""

    model_config = ConfigDict(extra="forbid")
    source: str
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    counts: dict[str, int] = Field(default_factory=dict)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: str = SCHEMA_VERSION
    task: Task = "classify"  # absent in bundles made before detection: they classify
    name: str
    version: str = "1"
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    labels: list[str]
    input: InputSpec
    preprocess: PreprocessSpec = Field(default_factory=PreprocessSpec)
    models: dict[str, ModelFile]
    routing: Routing = Field(default_factory=Routing)
    data: DataInfo | None = None
    reports: dict[str, Any] = Field(default_factory=dict)
    detection: DetectionSpec | None = None  # how a detect bundle's outputs decode

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("a bundle needs at least 1 label")
        if len(set(v)) != len(v):
            raise ValueError("labels must be unique")
        if any(not s.strip() or "\n" in s for s in v):
            raise ValueError("labels must be non-empty single-line strings")
        return v

    @model_validator(mode="after")
    def _task_fits(self) -> Manifest:
        if self.task == "classify" and len(self.labels) < 2:
            raise ValueError("a classifier needs at least 2 labels")
        if self.task == "detect" and self.detection is None:
            self.detection = DetectionSpec.model_validate({})
        if self.task == "classify" and self.detection is not None:
            raise ValueError("'detection' is only for task 'detect'")
        return self


class Bundle:
    """A loaded, verified bundle: its directory and manifest."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        """Prefer :func:`load_bundle`, which checks the files.

        Args:
            path: the bundle directory.
            manifest: its manifest.
        """
        self.path = path
        self.manifest = manifest

    @property
    def labels(self) -> list[str]:
        return self.manifest.labels

    def has(self, role: str) -> bool:
        """Args:
            role: a model role (cloud, edge, edge_source).

        Returns:
            Whether the manifest names a model for it.
        """
        return role in self.manifest.models

    def model_path(self, role: str) -> Path:
        """Args:
            role: a model role (cloud, edge, edge_source).

        Returns:
            The model file's path.

        Raises:
            BundleError: the bundle has no such model.
        """
        if role not in self.manifest.models:
            raise BundleError(f"{self.path}: bundle has no '{role}' model (has: {sorted(self.manifest.models)})")
        return self.path / self.manifest.models[role].file

    def __repr__(self) -> str:
        return f"Bundle({str(self.path)!r}, name={self.manifest.name!r}, models={sorted(self.manifest.models)})"


def sha256_file(path: str | Path) -> str:
    """Args:
        path: a file.

    Returns:
        Its sha256, hex.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Read and check a bundle.

    Args:
        path: the bundle directory.
        verify: check every model file's sha256 against the manifest.

    Returns:
        The bundle.

    Raises:
        BundleError: any defect (missing file, bad manifest, unsupported schema, checksum), naming the file
            and the cause.
    """
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: not a bundle directory (it does not exist or is a file)")
    manifest = _read_manifest(path / MANIFEST)
    labels_path = path / LABELS
    if labels_path.exists():
        file_labels = [ln for ln in labels_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if file_labels != manifest.labels:
            raise BundleError(
                f"{labels_path}: labels do not match manifest.json ({len(file_labels)} vs {len(manifest.labels)})"
            )
    for role, m in manifest.models.items():
        fp = path / m.file
        if not fp.is_file():
            raise BundleError(f"{fp}: {role} model file is missing")
        if verify:
            actual = sha256_file(fp)
            if actual != m.sha256:
                raise BundleError(
                    f"{fp}: sha256 mismatch for the {role} model (manifest {m.sha256[:12]}…, file {actual[:12]}…); "
                    "the file was modified or corrupted"
                )
    return Bundle(path, manifest)


def write_bundle(dest: str | Path, manifest: Manifest, files: Mapping[str, str | Path | bytes]) -> Bundle:
    """Write a bundle atomically. ``files`` maps names inside the bundle to a source path or bytes.

    Every model named in the manifest must be among ``files``; its sha256 is
    filled in here. If ``dest`` exists it is replaced only once the new one is whole.

    Args:
        dest: the bundle directory.
        manifest: its manifest (copied; model sha256s are filled in).
        files: name inside the bundle -> source path or bytes.

    Returns:
        The bundle as written.

    Raises:
        BundleError: a model file is missing from ``files``, or a name is not a plain file name.
        OSError: the disk refused; ``dest`` is as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    manifest = manifest.model_copy(deep=True)
    for role, m in manifest.models.items():
        if m.file not in files:
            raise BundleError(f"write_bundle: the {role} model file {m.file!r} was not given")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        for name, src in files.items():
            if "/" in name or name in (MANIFEST, LABELS):
                raise BundleError(f"write_bundle: bad file name {name!r}")
            target = tmp / name
            if isinstance(src, (bytes, bytearray)):
                target.write_bytes(src)
            else:
                shutil.copyfile(src, target)
        for m in manifest.models.values():
            m.sha256 = sha256_file(tmp / m.file)
        (tmp / LABELS).write_text("\n".join(manifest.labels) + "\n", encoding="utf-8")
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
        _fsync_dir(tmp)
        _swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle(dest, manifest)


def update_bundle(bundle: Bundle, manifest: Manifest, new_files: Mapping[str, str | Path | bytes]) -> Bundle:
    """Write a new version of ``bundle`` over itself: every file it has, plus (or replaced by) ``new_files``.

    Args:
        bundle: the bundle to replace.
        manifest: the new manifest.
        new_files: files to add or replace (name -> source path or bytes).

    Returns:
        The new bundle.

    Raises:
        BundleError, OSError: as for :func:`write_bundle`; the old bundle is then untouched.
    """
    files: dict[str, str | Path | bytes] = {
        p.name: p for p in bundle.path.iterdir() if p.is_file() and p.name not in (MANIFEST, LABELS)
    }
    files.update(new_files)
    return write_bundle(bundle.path, manifest, files)


def _read_manifest(mp: Path) -> Manifest:
    if not mp.is_file():
        raise BundleError(f"{mp}: manifest is missing")
    try:
        raw = json.loads(mp.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mp}: manifest is not valid JSON ({e}); truncated or corrupted?") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{mp}: manifest must be a JSON object")
    version = str(raw.get("schema_version", ""))
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise BundleError(
            f"{mp}: schema_version {version!r} is not supported (this SDK reads {SCHEMA_VERSION.split('.')[0]}.x)"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BundleError(f"{mp}: invalid manifest at '{where}': {first['msg']} ({e.error_count()} error(s))") from None


def _swap_in(tmp: Path, dest: Path) -> None:
    if not dest.exists():
        os.rename(tmp, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    old.rmdir()
    os.rename(dest, old)
    try:
        os.rename(tmp, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(d: Path) -> None:
    for p in d.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
