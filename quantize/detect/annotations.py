"""Detection data people already have: COCO JSON or YOLO txt, read into one in-memory form.

A folder is read as COCO when it holds one ``*.json`` annotation file (at its top
or in ``annotations/``), else as YOLO: images (in ``images/`` or at the top) with
one ``.txt`` per image (in ``labels/`` or beside it) of ``class cx cy w h`` lines,
normalised to 0..1, and class names in ``classes.txt``, ``obj.names`` or
``data.yaml``. Boxes come out as float32 [n, 4] ``x0, y0, x1, y1`` in pixels.

A bad annotation (a box outside its image or with no area, an empty or missing
label file, an unknown class, a line that does not parse) is an
:class:`AnnotationError` naming the file and line. With ``skip_bad`` each bad
image is left out instead, and :attr:`DetectionSet.bad` lists why.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_sdk.imageinfo import read_info

from ..data import IMAGE_EXTS, DataError

EDGE_TOLERANCE_PX = 1.0  # rounding in other tools: a box may poke this far out of its image


class AnnotationError(DataError):
    """A bad annotation: ``file`` and ``line`` (1-based, None when unknown) say where."""

    def __init__(self, file: str | Path, line: int | None, message: str):
        self.file, self.line, self.reason = str(file), line, message
        super().__init__(f"{file}{f' line {line}' if line else ''}: {message}")


@dataclass
class ImageRecord:
    """One image and its boxes (x0, y0, x1, y1 pixels) and class indices; ``pixels`` if held in memory."""

    path: str
    width: int
    height: int
    boxes: np.ndarray
    classes: np.ndarray
    pixels: np.ndarray | None = field(default=None, repr=False)

    def load(self) -> np.ndarray:
        """RGB uint8 HxWx3, through the shared decoder."""
        from edge_sdk.preprocess import load_image

        return self.pixels if self.pixels is not None else load_image(self.path)


@dataclass
class DetectionSet:
    labels: list[str]
    records: list[ImageRecord]
    source: str
    bad: list[AnnotationError] = field(default_factory=list)

    def subset(self, idx: Sequence[int], part: str) -> DetectionSet:
        return DetectionSet(self.labels, [self.records[i] for i in idx], f"{self.source}:{part}")

    @property
    def num_boxes(self) -> int:
        return int(sum(len(r.classes) for r in self.records))


def read_folder(root: str | Path, *, skip_bad: bool = False) -> DetectionSet:
    """A COCO or YOLO folder (see the module docstring) -> a DetectionSet."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    jsons = sorted(root.glob("*.json")) + sorted((root / "annotations").glob("*.json"))
    if len(jsons) > 1:
        raise DataError(f"{root}: {len(jsons)} JSON files ({', '.join(p.name for p in jsons[:5])}); keep one COCO file")
    ds = read_coco(jsons[0], root, skip_bad=skip_bad) if jsons else read_yolo(root, skip_bad=skip_bad)
    if not ds.records:
        first = f" (first: {ds.bad[0]})" if ds.bad else ""
        raise DataError(f"{root}: no usable annotated images{first}")
    return ds


# --- checks shared by both formats ------------------------------------------------------


def check_box(box: np.ndarray, width: int, height: int) -> str | None:
    """Why an x0,y0,x1,y1 pixel box is bad for a width x height image, or None."""
    if not np.isfinite(box).all():
        return f"box {box.tolist()} is not finite"
    x0, y0, x1, y1 = box.tolist()
    if x1 <= x0 or y1 <= y0:
        return f"box {_fmt(box)} has no area"
    t = EDGE_TOLERANCE_PX
    if x0 < -t or y0 < -t or x1 > width + t or y1 > height + t:
        return f"box {_fmt(box)} extends outside the {width}x{height} image"
    return None


def _fmt(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.1f}" for v in box.tolist()) + "]"


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    info = read_info(head)
    if info.width is None or info.height is None:
        raise DataError(f"{path}: not a readable PNG/JPEG/BMP/WebP image")
    return int(info.width), int(info.height)


def _clip(boxes: np.ndarray, w: int, h: int) -> np.ndarray:
    if boxes.size:
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes


# --- COCO ---------------------------------------------------------------------------------


def _bbox_lines(text: str) -> list[int]:
    """The 1-based line of each ``"bbox"`` key, in order: annotation k's bbox is the k-th one."""
    starts = [m.start() for m in re.finditer(r'"bbox"\s*:', text)]
    return [text.count("\n", 0, s) + 1 for s in starts]


def _coco_doc(path: Path) -> tuple[dict, str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise AnnotationError(path, 1, "empty annotation file")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(path, e.lineno, f"not valid JSON: {e.msg}") from None
    keys = ("images", "annotations", "categories")
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in keys):
        raise AnnotationError(path, 1, "not a COCO file: needs 'images', 'annotations' and 'categories' lists")
    return doc, text


def _coco_image_path(file_name: str, ann_path: Path, root: Path) -> Path:
    for base in (ann_path.parent, root, root / "images", ann_path.parent.parent / "images"):
        p = base / file_name
        if p.is_file():
            return p
    return root / "images" / file_name


def read_coco(path: str | Path, root: str | Path | None = None, *, skip_bad: bool = False) -> DetectionSet:
    """A COCO detection JSON: boxes [x, y, w, h] in pixels; labels are the categories ordered by id."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    doc, text = _coco_doc(path)
    cats = sorted(doc["categories"], key=lambda c: c.get("id", 0))
    labels = [str(c.get("name", c.get("id"))) for c in cats]
    cat_index = {c.get("id"): i for i, c in enumerate(cats)}
    lines = _bbox_lines(text)
    lines = lines if len(lines) == len(doc["annotations"]) else []
    images = {im.get("id"): im for im in doc["images"]}
    per_image: dict = {k: ([], []) for k in images}
    bad: dict = {}
    for k, a in enumerate(doc["annotations"]):
        line = lines[k] if lines else None
        err = _coco_annotation_error(a, images, cat_index)
        if err:
            bad.setdefault(a.get("image_id"), AnnotationError(path, line, f"annotation id {a.get('id')}: {err}"))
            continue
        per_image[a["image_id"]][0].append(np.asarray(a["bbox"], np.float64))
        per_image[a["image_id"]][1].append(cat_index[a["category_id"]])
    records, errors = [], []
    for img_id, im in images.items():
        if img_id in bad:
            if not skip_bad:
                raise bad[img_id]
            errors.append(bad[img_id])
            continue
        xywh, cls = per_image[img_id]
        b = np.asarray(xywh, np.float32).reshape(-1, 4)
        b[:, 2:] += b[:, :2]
        w, h = int(im["width"]), int(im["height"])
        records.append(ImageRecord(str(_coco_image_path(str(im["file_name"]), path, root)), w, h, _clip(b, w, h),
                                   np.asarray(cls, np.int64)))
    return DetectionSet(labels, records, str(path), errors)


def _coco_annotation_error(a: dict, images: dict, cat_index: dict) -> str | None:
    if not isinstance(a, dict):
        return "not a JSON object"
    im = images.get(a.get("image_id"))
    if im is None:
        return f"image_id {a.get('image_id')!r} is not among the images"
    if a.get("category_id") not in cat_index:
        return f"unknown category_id {a.get('category_id')!r} (categories: {sorted(cat_index)})"
    bbox = a.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        return f"bbox must be 4 numbers [x, y, width, height], not {bbox!r}"
    b = np.asarray(bbox, np.float64)
    b[2:] += b[:2]
    try:
        w, h = int(im["width"]), int(im["height"])
    except (KeyError, TypeError, ValueError):
        return f"image {im.get('file_name')!r} has no width/height"
    return check_box(b, w, h)


# --- YOLO --------------------------------------------------------------------------------


def _yolo_names(root: Path) -> list[str]:
    for name in ("classes.txt", "obj.names"):
        p = root / name
        if p.is_file():
            names = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
            if names:
                return names
            raise AnnotationError(p, 1, "empty class-name file")
    y = root / "data.yaml"
    if y.is_file():
        return _yaml_names(y)
    raise DataError(f"{root}: no classes.txt, obj.names or data.yaml naming the YOLO classes (and no COCO .json)")


def _yaml_names(path: Path) -> list[str]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise AnnotationError(path, getattr(getattr(e, "problem_mark", None), "line", -1) + 1 or None,
                              f"not valid YAML: {e}") from None
    names = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, list) or not names:
        raise AnnotationError(path, None, "no 'names:' list of class names")
    return [str(n) for n in names]


def _yolo_images(root: Path) -> list[tuple[Path, Path]]:
    """(image, label file) pairs: images/ + labels/, or both side by side at the top."""
    img_dir = root / "images" if (root / "images").is_dir() else root
    out = []
    for p in sorted(f for f in img_dir.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS):
        rel = p.relative_to(img_dir).with_suffix(".txt")
        label = (root / "labels" / rel) if (root / "labels").is_dir() else p.with_suffix(".txt")
        out.append((p, label))
    if not out:
        raise DataError(f"{root}: no images (.jpg/.png/.bmp/.webp) in {img_dir}")
    return out


def parse_yolo_file(label: Path, num_classes: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """One YOLO label file -> (boxes xyxy pixels, classes); AnnotationError naming the line on any defect."""
    if not label.is_file():
        raise AnnotationError(label, None, "label file is missing for this image")
    text = label.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise AnnotationError(label, 1, "empty label file (no objects)")
    boxes, classes = [], []
    for n, raw in enumerate(text.splitlines(), 1):
        parts = raw.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise AnnotationError(label, n, f"expected 5 fields 'class cx cy w h', got {len(parts)}: {raw.strip()!r}")
        try:
            cls = int(parts[0])
            cx, cy, w, h = (float(v) for v in parts[1:])
        except ValueError:
            raise AnnotationError(label, n, f"not numbers: {raw.strip()!r}") from None
        if not 0 <= cls < num_classes:
            raise AnnotationError(label, n, f"unknown class {cls} (there are {num_classes}: 0..{num_classes - 1})")
        box = np.array([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
        err = check_box(box, width, height)
        if err:
            raise AnnotationError(label, n, err)
        boxes.append(box)
        classes.append(cls)
    b = _clip(np.asarray(boxes, np.float32).reshape(-1, 4), width, height)
    return b, np.asarray(classes, np.int64)


def read_yolo(root: str | Path, *, skip_bad: bool = False) -> DetectionSet:
    root = Path(root)
    labels = _yolo_names(root)
    records, errors = [], []
    for img, label in _yolo_images(root):
        try:
            w, h = _image_size(img)
            boxes, classes = parse_yolo_file(label, len(labels), w, h)
        except AnnotationError as e:
            if not skip_bad:
                raise
            errors.append(e)
            continue
        records.append(ImageRecord(str(img), w, h, boxes, classes))
    return DetectionSet(labels, records, str(root), errors)


# --- writers (for tests, the demo and exporting the built-in set) ----------------------------


def write_coco(ds: DetectionSet, root: str | Path, name: str = "annotations.json") -> Path:
    """Images as PNG under ``root/images`` and one COCO JSON (the inverse of :func:`read_coco`)."""
    from edge_sdk.preprocess import encode_png

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, r in enumerate(ds.records):
        fn = f"{i:05d}.png"
        (root / "images" / fn).write_bytes(encode_png(r.load()))
        images.append({"id": i + 1, "file_name": fn, "width": r.width, "height": r.height})
        for b, c in zip(r.boxes.tolist(), r.classes.tolist(), strict=True):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1, "iscrowd": 0,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1])})
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(ds.labels)]
    out = root / name
    out.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}, indent=1), encoding="utf-8")
    return out


def write_yolo(ds: DetectionSet, root: str | Path) -> Path:
    """Images under ``root/images``, one label file each under ``root/labels``, and classes.txt."""
    from edge_sdk.preprocess import encode_png

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(ds.records):
        (root / "images" / f"{i:05d}.png").write_bytes(encode_png(r.load()))
        rows = [f"{c} {(b[0] + b[2]) / 2 / r.width:.6f} {(b[1] + b[3]) / 2 / r.height:.6f} "
                f"{(b[2] - b[0]) / r.width:.6f} {(b[3] - b[1]) / r.height:.6f}"
                for b, c in zip(r.boxes.tolist(), r.classes.tolist(), strict=True)]
        (root / "labels" / f"{i:05d}.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "classes.txt").write_text("\n".join(ds.labels) + "\n", encoding="utf-8")
    return root
