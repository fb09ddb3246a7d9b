"""fkd-labels show: the figure draws the stored boxes, the replayed crops and their named top-K."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.patches import Rectangle
from PIL import Image

from fkd.data.crops import fixed_to_boxes, replay_fixed
from fkd.data.images import list_images, load_image
from fkd.labels.cli import main
from fkd.labels.show import draw, find_image
from fkd.store import LabelStore

from conftest import make_image_folder, write_random_store


@pytest.fixture
def store_and_data(tmp_path: Path) -> tuple[Path, Path]:
    data = make_image_folder(tmp_path / "images", classes=3, per_class=4)
    images = list_images(data)
    sizes = np.array([Image.open(images.path(i)).size[::-1] for i in range(len(images))])
    store, _ = write_random_store(
        tmp_path / "store", num_classes=10, num_crops=12, num_images=len(images), image_ids=images.image_ids, sizes=sizes,
        labels=images.labels,
    )
    return store, data


def test_show_writes_a_png(store_and_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store, data = store_and_data
    out = tmp_path / "figs" / "show.png"
    assert main(["show", str(store), "--image", "c1/img002.jpg", "--data", str(data), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == (1300, 920)  # 13 x 9.2 inches (4 crop rows) at 100 dpi


def test_figure_content(store_and_data: tuple[Path, Path]) -> None:
    path, data = store_and_data
    store = LabelStore(path)
    record = store.read(find_image(store, "c2/img003.jpg"))
    pixels = load_image(data / record.image_id)
    fig = draw(store.meta, record, pixels, num_boxes=10, num_crops=3)
    image_ax, *rest = fig.axes
    rectangles = [p for p in image_ax.patches if isinstance(p, Rectangle)]
    boxes = fixed_to_boxes(record.boxes_fixed[:10], record.height, record.width)
    assert [(r.get_y() + 0.5, r.get_x() + 0.5, r.get_height(), r.get_width()) for r in rectangles] == [tuple(b) for b in boxes.tolist()]
    assert [r.get_linestyle() for r in rectangles] == ["--" if f else "-" for f in record.flips[:10]]
    assert image_ax.get_title().startswith("c2/img003.jpg  (class: class2)\nfirst 10 of 12 crops")
    crops = replay_fixed(pixels, record.boxes_fixed[:3], record.flips[:3], tuple(store.meta.input_size), store.meta.interpolation)
    labels = record.decoded_labels(store.meta.label_codec())
    for n in range(3):
        crop_ax, bar_ax = rest[2 * n], rest[2 * n + 1]
        assert np.array_equal(crop_ax.get_images()[0].get_array(), crops[n].permute(1, 2, 0).numpy())
        top = labels[n].topk(5)
        assert [t.get_text() for t in bar_ax.get_yticklabels()] == [f"class{c}" for c in top.indices.tolist()]
        assert np.allclose([b.get_width() for b in bar_ax.patches], top.values.numpy())
    assert len(rest) == 6


def test_resized_image_is_noted(store_and_data: tuple[Path, Path]) -> None:
    path, data = store_and_data
    store = LabelStore(path)
    record = store.read(0)
    pixels = load_image(data / record.image_id)[:, :20, :30]
    title = draw(store.meta, record, pixels, 4, 0).axes[0].get_title()
    assert title.endswith(f"image is 20x30, the crops were drawn on {record.height}x{record.width}: boxes rescaled")


def test_show_errors(store_and_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store, data = store_and_data
    out = str(tmp_path / "x.png")
    assert main(["show", str(store), "--image", "img001.jpg", "--data", str(data), "--out", out]) == 2
    assert ("image 'img001.jpg' is not in the store; did you mean ['c0/img001.jpg', 'c1/img001.jpg', 'c2/img001.jpg']?"
            in capsys.readouterr().err)
    assert main(["show", str(store), "--image", "12", "--data", str(data), "--out", out]) == 2
    assert "image index 12 is out of range: the store holds 12 images" in capsys.readouterr().err
    assert main(["show", str(store), "--image", "3", "--data", str(tmp_path), "--out", out]) == 2
    assert f"image file {tmp_path / 'c0/img003.jpg'} not found; pass the --data the store was generated from" in capsys.readouterr().err
    missing = tmp_path / "no-such-folder"  # named in full, not as its parent + the image id
    assert main(["show", str(store), "--image", "3", "--data", str(missing), "--out", out]) == 2
    assert capsys.readouterr().err.endswith(
        f"fkd-labels show: error: --data {missing}: no such directory or list file; pass the --data the store was generated from\n"
    )
    assert not Path(out).exists()
