"""Which images a run covers, and how one image file becomes an RGB uint8 tensor.

Both stages must see the same image list in the same order (the label store is indexed by it) and
the same pixels for every image (stored crop boxes are replayed on them), so listing and decoding
live here, once. Image ids are paths relative to the data root with '/' separators, so a store made
on one machine or OS can be trained from on another.
"""

from __future__ import annotations

import csv
import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .sources import IMG_EXTENSIONS, UNKNOWN_LABEL, BadImageError, ImageEntry, ImageList, ImageLocation, is_image_file
from .tars import is_tar_data, list_tar_images

_HEADER_LABEL_NAMES = {"label", "labels", "class", "target"}


class ImageMismatchError(ValueError):
    """An image file whose bytes are not those of the image a label store was made from."""


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image and the fingerprint of its file: CRC-32 of the file's bytes.

    Paths and sizes do not identify an image (a test set may reuse a training set's file names and
    sizes); the bytes do. The CRC costs about 0.1 ms per 100 KB JPEG, against milliseconds of
    decoding, and the bytes are read anyway.
    """

    pixels: torch.Tensor
    fingerprint: int


def fingerprint(data: bytes) -> int:
    """An image file's fingerprint: CRC-32 of its bytes (what stores record per image)."""
    return zlib.crc32(data)


def check_fingerprint(path: "str | os.PathLike | ImageLocation", found: int, expected: "int | None") -> None:
    """Refuse an image file whose CRC-32 differs from the one recorded at labelling time
    (``expected`` None: the store predates fingerprints, nothing to check)."""
    if expected is not None and found != expected:
        raise ImageMismatchError(
            f"{path} is not the image the label store was made from (CRC-32 of its bytes {found:08x}, "
            f"recorded {expected:08x}); point --data at the images the store was labelled from"
        )


def list_images(data: str | os.PathLike, root: str | os.PathLike | None = None) -> ImageList:
    """List the images of ``data``: an ImageFolder directory, a CSV/TXT list file, or tar shards
    (``fkd.data.tars``: a ``.tar`` path, a brace pattern ``train-{0000..0099}.tar``, a list of shards).

    ImageFolder: sorted class subfolders give labels 0..K-1 (torchvision's rule); image files with
    torchvision's extensions are searched recursively in each class folder; hidden folders are
    skipped. List file: one ``relative/path[,label]`` per line (comma or whitespace separated,
    '#' comment lines, optional ``path,label`` header), paths relative to ``root`` or else to the
    list file's folder.
    """
    if is_tar_data(data):
        return list_tar_images(data)
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"image data not found: {data}")
    if data.is_dir():
        return _scan_image_folder(data)
    return _read_image_list(data, Path(root) if root is not None else data.parent)


def _scan_image_folder(root: Path) -> ImageList:
    class_names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not class_names:
        raise ValueError(f"no class folders in image folder {root} (expected {root}/<class>/<image>)")
    entries: list[ImageEntry] = []
    for label, name in enumerate(class_names):
        ids = []
        for folder, dirs, files in os.walk(root / name, followlinks=True):
            dirs[:] = [d for d in dirs if not d.startswith(".") and not _loops_back(Path(folder), d)]
            rel = Path(folder).relative_to(root).as_posix()
            ids.extend(f"{rel}/{f}" for f in files if is_image_file(f))
        if not ids:
            raise ValueError(f"class folder {root / name} has no image files (extensions: {', '.join(IMG_EXTENSIONS)})")
        entries.extend(ImageEntry(i, label) for i in sorted(ids))
    return ImageList(root, entries, class_names)


def _loops_back(folder: Path, child: str) -> bool:
    """Whether ``folder/child`` leads (through a link) back to ``folder`` or one of its parents: such
    a link is not followed, so a loop is listed once, as the tar listing (``fkd.data.tars``) lists it."""
    target, here = os.path.realpath(folder / child), os.path.realpath(folder)
    return here == target or here.startswith(target.rstrip(os.sep) + os.sep)


def _split_line(line: str) -> tuple[str, str | None]:
    """``path[,label]`` or ``path[ label]``. Whitespace separates a label only when the last token
    is an integer, so unlabeled lists may hold paths with spaces."""
    if "," in line:
        fields = next(csv.reader([line]))
        if len(fields) > 2:
            raise ValueError(f"expected 'path[,label]', got {len(fields)} fields")
        path, label = fields[0].strip(), fields[1].strip() if len(fields) == 2 else None
        return path, label
    parts = line.rsplit(None, 1)
    if len(parts) == 2 and _is_int(parts[1]):
        return parts[0], parts[1]
    return line, None


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _relative_id(path: str, root: Path) -> str:
    pure = PurePath(path.replace("\\", "/"))
    if pure.is_absolute():
        try:
            pure = PurePath(os.path.normpath(pure)).relative_to(os.path.abspath(root))  # symlinks kept as named
        except ValueError:
            raise ValueError(f"absolute path {path} is not inside the data root {root}") from None
    rel = pure.as_posix()
    if rel in ("", ".") or ".." in pure.parts:
        raise ValueError(f"bad image path {path!r} (must name a file inside the data root {root})")
    return rel


def _read_image_list(list_file: Path, root: Path) -> ImageList:
    entries: list[ImageEntry] = []
    seen: set[str] = set()
    labelled: bool | None = None
    first = True
    with open(list_file, encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{list_file}:{lineno}"
            try:
                path, label_text = _split_line(line)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            if first and label_text is not None and label_text.lower() in _HEADER_LABEL_NAMES:
                first = False
                continue
            first = False
            if labelled is None:
                labelled = label_text is not None
            elif labelled != (label_text is not None):
                raise ValueError(f"{where}: every line needs a label or none does ({line!r})")
            label = UNKNOWN_LABEL
            if label_text is not None:
                if not _is_int(label_text) or int(label_text) < 0:
                    raise ValueError(f"{where}: label {label_text!r} is not a non-negative integer")
                label = int(label_text)
            try:
                image_id = _relative_id(path, root)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            if image_id in seen:
                raise ValueError(f"{where}: duplicate image {image_id!r}")
            seen.add(image_id)
            entries.append(ImageEntry(image_id, label))
    if not entries:
        raise ValueError(f"image list {list_file} names no images")
    num_classes = max(e.label for e in entries) + 1
    return ImageList(root, entries, [str(c) for c in range(num_classes)])


def load_image(path: "str | os.PathLike | ImageLocation") -> torch.Tensor:
    """Decode an image file to a uint8 (3, H, W) RGB tensor, whatever its mode (``read_image``)."""
    return read_image(path).pixels


def read_image(path: "str | os.PathLike | ImageLocation") -> LoadedImage:
    """Read an image file (or tar member) once: its fingerprint (CRC-32 of the bytes) and its
    pixels as a uint8 (3, H, W) RGB tensor, whatever its mode.

    Teacher and student must agree on every pixel, so decoding is done once, here. Alpha is dropped
    (not composited), as ``PIL.Image.convert('RGB')`` in torchvision/timm does; high-bit-depth
    grayscale is rescaled by its real bit depth (PIL's own conversion would clip it to white).
    The tensor is a (3, H, W) view of the decoder's (H, W, 3) memory, not a copy: crops cut from it
    are bitwise the same, and skipping the copy saves about 1 ms per ImageNet-sized image
    (benchmarks/speed/loader.py --profile).
    """
    location = path if isinstance(path, ImageLocation) else ImageLocation(str(path))
    if not Path(location.path).is_file():
        raise FileNotFoundError(f"image file not found: {location.path}")
    data = location.read_bytes()
    path = location if location.size >= 0 else Path(location.path)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            array = _to_rgb_array(img)
    except UnidentifiedImageError as e:  # its message names the in-memory buffer, not the file
        raise BadImageError(path, f"cannot identify image file {str(path)!r}") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImageError(path, str(e) or type(e).__name__) from e
    return LoadedImage(torch.from_numpy(array).permute(2, 0, 1), fingerprint(data))


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 of any PIL mode."""
    if img.mode.startswith("I") or img.mode == "F":
        gray = _integer_to_uint8(img) if img.mode != "F" else _float_to_uint8(np.asarray(img, dtype=np.float64))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # via RGBA: PIL warns when palette transparency meets convert('RGB')
    return np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy: torch.from_numpy needs one


def _integer_to_uint8(img: Image.Image) -> np.ndarray:
    """Scale 16/32-bit integer grayscale to 0..255 by its full range: v * 255 / (2**bits - 1)."""
    values = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16"):
        bits = 16
    else:
        # Mode "I" is int32 in memory; a TIFF says how many bits are real and whether they are
        # signed (tags 258 BitsPerSample, 339 SampleFormat: 1 unsigned = TIFF default, 2 signed).
        tags = getattr(img, "tag_v2", None)
        bits, signed = (int(max(tags.get(258, (32,)))), tags.get(339, (1,))[0] == 2) if tags is not None else (32, True)
        bits -= signed  # the magnitude of signed samples has one bit less
    peak = 2.0**bits - 1
    return np.rint(np.clip(values, 0, peak) * (255.0 / peak)).astype(np.uint8)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] are intensities (the usual float TIFF); anything else is taken on
    PIL's 0..255 scale and clipped, as PIL's own conversion does."""
    finite = values[np.isfinite(values)]
    in_unit_range = finite.size > 0 and finite.min() >= 0.0 and finite.max() <= 1.0
    scaled = values * 255.0 if in_unit_range else values
    return np.rint(np.clip(np.nan_to_num(scaled), 0, 255)).astype(np.uint8)
