"""Image listing (ImageFolder and list files) and decoding of every PIL mode to RGB uint8."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fkd.data.images import BadImageError, ImageEntry, ImageList, list_images, load_image

from conftest import make_image_folder

# ---------------------------------------------------------------------------------------------
# ImageFolder


def test_image_folder_lists_sorted_classes_recursively_with_image_extensions(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", classes=2, per_class=2)
    (root / "c1" / "sub").mkdir()
    Image.new("RGB", (5, 4)).save(root / "c1" / "sub" / "deep.PNG")  # upper-case extension counts
    (root / "c0" / "notes.txt").write_text("not an image")
    (root / "c0" / ".cache").mkdir()
    Image.new("RGB", (5, 4)).save(root / "c0" / ".cache" / "hidden.png")
    (root / ".git").mkdir()

    images = list_images(root)

    assert images.class_names == ["c0", "c1"]
    assert images.root == root
    assert images.entries == [
        ImageEntry("c0/img000.jpg", 0), ImageEntry("c0/img001.jpg", 0),
        ImageEntry("c1/img000.jpg", 1), ImageEntry("c1/img001.jpg", 1), ImageEntry("c1/sub/deep.PNG", 1),
    ]
    assert len(images) == 5
    assert images.path(4) == root / "c1" / "sub" / "deep.PNG"
    assert images.image_ids[0] == "c0/img000.jpg"
    np.testing.assert_array_equal(images.labels, [0, 0, 1, 1, 1])


def test_folder_links_are_followed_but_a_loop_is_listed_once(tmp_path: Path) -> None:
    """A link back to its own folder (``c0/self -> .``) would list nested copies without end (os.walk
    stops at 40 levels); a link elsewhere in the tree is followed like a folder, as the tar listing does."""
    root = make_image_folder(tmp_path / "data", classes=2, per_class=1)
    (root / "c0" / "self").symlink_to(".", target_is_directory=True)
    (root / "c0" / "up").symlink_to("..", target_is_directory=True)
    (root / "c1" / "alias").symlink_to(root / "c0", target_is_directory=True)

    ids = list_images(root).image_ids

    assert ids == ["c0/img000.jpg", "c1/alias/img000.jpg", "c1/img000.jpg"]


def test_missing_data_and_empty_folders_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="^" + re.escape(f"image data not found: {tmp_path / 'nope'}") + "$"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as e:
        list_images(tmp_path / "empty")
    assert str(e.value) == f"no class folders in image folder {tmp_path / 'empty'} (expected {tmp_path / 'empty'}/<class>/<image>)"
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(ValueError, match="^" + re.escape(f"class folder {tmp_path / 'empty' / 'cat'} has no image files")):
        list_images(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# List files


def test_csv_list_with_header_comments_labels_and_mixed_separators(tmp_path: Path) -> None:
    listing = tmp_path / "lists" / "train.csv"
    listing.parent.mkdir()
    listing.write_text(
        "path,label\n"
        "# a comment line\n"
        "\n"
        "a/x.jpg,1\n"
        "  b/y.png 0  \n"
        '"c d/z,1.jpg",2\n'
        "win\\style\\w.jpg,0\n"
    )
    images = list_images(listing)
    assert images.root == listing.parent
    assert images.entries == [
        ImageEntry("a/x.jpg", 1), ImageEntry("b/y.png", 0), ImageEntry("c d/z,1.jpg", 2), ImageEntry("win/style/w.jpg", 0),
    ]
    assert images.class_names == ["0", "1", "2"]
    assert images.path(2) == listing.parent / "c d" / "z,1.jpg"

    other_root = tmp_path / "elsewhere"
    assert list_images(listing, root=other_root).path(0) == other_root / "a" / "x.jpg"


def test_unlabelled_txt_list_allows_spaces_in_paths(tmp_path: Path) -> None:
    listing = tmp_path / "val.txt"
    listing.write_text("one.jpg\nmy photos/two.jpg\n")
    images = list_images(listing)
    assert images.entries == [ImageEntry("one.jpg", -1), ImageEntry("my photos/two.jpg", -1)]
    assert images.class_names == []


def test_absolute_path_inside_root_becomes_relative(tmp_path: Path) -> None:
    listing = tmp_path / "l.csv"
    listing.write_text(f"{tmp_path / 'x' / 'a.jpg'},3\n")
    assert list_images(listing).entries == [ImageEntry("x/a.jpg", 3)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a.jpg,1\nb.jpg\n", "{f}:2: every line needs a label or none does ('b.jpg')"),
        ("a.jpg,cat\n", "{f}:1: label 'cat' is not a non-negative integer"),
        ("a.jpg,-2\n", "{f}:1: label '-2' is not a non-negative integer"),
        ("a.jpg,1,2\n", "{f}:1: expected 'path[,label]', got 3 fields"),
        ("# only comments\n", "image list {f} names no images"),
        ("a.jpg,0\n./a.jpg,1\n", "{f}:2: duplicate image 'a.jpg'"),
        ("../up.jpg,0\n", "{f}:1: bad image path '../up.jpg' (must name a file inside the data root {root})"),
        ("/outside/a.jpg,0\n", "{f}:1: absolute path /outside/a.jpg is not inside the data root {root}"),
    ],
)
def test_list_file_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    listing = tmp_path / "bad.csv"
    listing.write_text(text)
    with pytest.raises(ValueError) as e:
        list_images(listing)
    assert str(e.value) == message.format(f=listing, root=tmp_path)


def test_fingerprint_depends_on_ids_labels_and_order_only() -> None:
    entries = [ImageEntry("a.jpg", 0), ImageEntry("b.jpg", 1)]
    base = ImageList(Path("/data"), entries, ["x", "y"]).fingerprint()
    assert len(base) == 64
    assert ImageList(Path("/elsewhere"), list(entries), ["p", "q"]).fingerprint() == base
    assert ImageList(Path("/data"), [entries[0], ImageEntry("b.jpg", 0)], ["x", "y"]).fingerprint() != base
    assert ImageList(Path("/data"), entries[::-1], ["x", "y"]).fingerprint() != base
    assert ImageList(Path("/data"), [entries[0], ImageEntry("c.jpg", 1)], ["x", "y"]).fingerprint() != base


# ---------------------------------------------------------------------------------------------
# Decoding


def _palette_image() -> Image.Image:
    img = Image.new("P", (3, 2))
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2, 2, 1, 0])
    img.info["transparency"] = 0  # red is transparent: its colour must survive
    return img


def _from_values(mode: str, values: list) -> Image.Image:
    img = Image.new(mode, (3, 2))
    img.putdata(values)
    return img


# (image, file suffix, expected RGB per pixel in row-major order over a 2x3 image)
MODE_CASES = {
    "RGB": (Image.fromarray(np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 10), ".png",
            [(i * 30, i * 30 + 10, i * 30 + 20) for i in range(6)]),
    "L": (_from_values("L", [0, 1, 77, 128, 254, 255]), ".png", [(v, v, v) for v in [0, 1, 77, 128, 254, 255]]),
    "1": (_from_values("1", [0, 255, 0, 255, 255, 0]), ".png", [(v, v, v) for v in [0, 255, 0, 255, 255, 0]]),
    "LA": (_from_values("LA", [(77, 0), (200, 255), (0, 10), (5, 5), (6, 6), (7, 7)]), ".png",
           [(v, v, v) for v in [77, 200, 0, 5, 6, 7]]),
    "P": (_palette_image(), ".png", [(255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 255), (0, 255, 0), (255, 0, 0)]),
    "RGBA": (_from_values("RGBA", [(10, 20, 30, 0), (40, 50, 60, 128), (1, 2, 3, 255)] * 2), ".png",
             [(10, 20, 30), (40, 50, 60), (1, 2, 3)] * 2),
    "CMYK": (_from_values("CMYK", [(0, 0, 0, 0), (255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0), (0, 0, 0, 255), (0, 0, 0, 0)]),
             ".tif", [(255, 255, 255), (0, 255, 255), (255, 0, 255), (255, 255, 0), (0, 0, 0), (255, 255, 255)]),
    "I;16": (_from_values("I;16", [0, 32768, 65535, 257, 128, 65534]), ".png", [(v, v, v) for v in [0, 128, 255, 1, 0, 255]]),
    "I;16B": (_from_values("I;16B", [0, 32768, 65535, 257, 385, 1000]), ".tif", [(v, v, v) for v in [0, 128, 255, 1, 1, 4]]),
    "I": (Image.fromarray(np.array([[0, 2**31 - 1, 2**30], [-5, 8421505, 2**24]], dtype=np.int32)), ".tif",
          [(v, v, v) for v in [0, 255, 128, 0, 1, 2]]),
    "F": (Image.fromarray(np.array([[0.0, 0.5, 1.0], [0.25, 0.1, 0.999]], dtype=np.float32)), ".tif",
          [(v, v, v) for v in [0, 128, 255, 64, 26, 255]]),
    "F-0..255": (Image.fromarray(np.array([[0.0, 77.4, 300.0], [-3.0, 255.0, 1.5]], dtype=np.float32)), ".tif",
                 [(v, v, v) for v in [0, 77, 255, 0, 255, 2]]),
}


@pytest.mark.parametrize("case", sorted(MODE_CASES))
def test_every_mode_decodes_to_expected_rgb(tmp_path: Path, case: str) -> None:
    img, suffix, expected = MODE_CASES[case]
    path = tmp_path / f"img{suffix}"
    img.save(path)
    assert Image.open(path).mode == img.mode  # the file really holds the mode under test

    pixels = load_image(path)

    assert pixels.dtype == torch.uint8
    assert pixels.shape == (3, 2, 3)
    assert [tuple(int(c) for c in pixels[:, r, col]) for r in range(2) for col in range(3)] == expected


def test_jpeg_decodes_like_pil(tmp_path: Path) -> None:
    path = make_image_folder(tmp_path, classes=1, per_class=1) / "c0" / "img000.jpg"
    expected = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(load_image(path), expected)


def test_non_image_file_raises_bad_image_error_naming_path(tmp_path: Path) -> None:
    path = tmp_path / "fake.jpg"
    path.write_bytes(b"this is not a picture")
    with pytest.raises(BadImageError) as e:
        load_image(path)
    assert e.value.path == path
    assert str(e.value) == f"cannot read image {path}: cannot identify image file '{path}'"
    assert isinstance(e.value, ValueError)


def test_truncated_jpeg_raises_bad_image_error(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(BadImageError, match="^" + re.escape(f"cannot read image {path}: image file is truncated")):
        load_image(path)


def test_missing_image_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="^" + re.escape(f"image file not found: {tmp_path / 'gone.png'}") + "$"):
        load_image(tmp_path / "gone.png")
