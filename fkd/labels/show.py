"""``fkd-labels show``: draw one image's stored crops and what the teacher said about them.

Left: the image with its first N crop boxes (dashed where the crop is flipped). Right, for the first
few of those crops: the crop as the teacher saw it (replayed from the store with ``fkd.data.crops``, at
the teacher's input size and interpolation, flip applied; in a reinforced store with its stored
augmentation and its pair mixed in, named above it, as training renders it: ``fkd.labels.views``)
beside a bar chart of its decoded soft label's top classes, named. A wrong box, a flipped flip or a label that does not match the crop is
obvious at a glance, which no table of numbers makes it.

For an embedding store the middle panel is the matrix of cosine similarities between the shown
crops' decoded embeddings (numbered as the boxes), and the first few crops are drawn beside it with
their embedding's length: overlapping crops of one object should be alike, a zero or constant
embedding shows as a uniform matrix.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display; must precede pyplot's import
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from ..data.crops import fixed_to_boxes, replay_fixed  # noqa: E402
from ..data.images import ImageMismatchError, check_fingerprint, read_image  # noqa: E402
from ..payload import quantize  # noqa: E402
from ..store import ImageLabels, LabelStore, StoreMeta  # noqa: E402
from .errors import LabelsError  # noqa: E402
from .views import describe_view, image_locator, render_crops  # noqa: E402

MAX_BARS = 10
MAX_ANNOTATED = 12
"""Similarity matrices up to this many crops get their values written in the cells."""
COLORS = plt.get_cmap("tab10").colors


def find_image(store: LabelStore, image: str) -> int:
    """Store index of ``image``: an image id, or an integer index into the store."""
    ids = store.image_ids
    if image in ids:
        return ids.index(image)
    if image.isdigit():
        if int(image) < len(ids):
            return int(image)
        raise LabelsError(f"image index {image} is out of range: the store holds {len(ids)} images")
    close = [i for i in ids if Path(i).name == Path(image).name][:3]
    hint = f"; did you mean {close}?" if close else "; image ids are paths relative to the data root, e.g. " + repr(ids[0])
    raise LabelsError(f"image {image!r} is not in the store{hint}")


def render(
    store: LabelStore,
    image: str,
    data: "str | Path",
    out: "str | Path",
    num_boxes: int = 16,
    num_crops: int = 4,
) -> Path:
    """Draw image ``image`` (id or index) of ``store``, whose pixels are under ``data``, to the PNG ``out``."""
    if num_boxes < 1 or num_crops < 0:
        raise LabelsError(f"--boxes must be >= 1 and --crops >= 0, got {num_boxes} and {num_crops}")
    record = store.read(find_image(store, image))
    locate = image_locator(data)
    path = locate(record.image_id)
    loaded = read_image(path)
    try:
        check_fingerprint(path, loaded.fingerprint, record.fingerprint)
        views = None
        count = min(num_crops, num_boxes, store.meta.num_crops)
        if store.meta.reinforced and count:  # the crops as the teacher saw them: stored augmentation, partners decoded
            views = render_crops(store, locate, {record.index: np.arange(count)})[record.index]
    except ImageMismatchError as exc:
        raise LabelsError(str(exc)) from None
    fig = (draw if store.meta.embedding is None else draw_embedding)(store.meta, record, loaded.pixels, num_boxes, num_crops, views)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def draw_image(ax: Axes, meta: StoreMeta, record: ImageLabels, pixels: torch.Tensor, shown: int, detailed: int) -> None:
    """The image with its first ``shown`` crop boxes, the first ``detailed`` of them bold and numbered."""
    height, width = pixels.shape[-2:]
    boxes = fixed_to_boxes(record.boxes_fixed[:shown], height, width)
    ax.imshow(pixels.permute(1, 2, 0).numpy())
    for n, (top, left, h, w) in enumerate(boxes):
        flipped = bool(record.flips[n])
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), w, h, fill=False, lw=2 if n < detailed else 1,
                               ls="--" if flipped else "-", color=COLORS[n % len(COLORS)]))
        if n < detailed:
            ax.text(left, top, f" {n}", color="white", fontsize=10, va="top", fontweight="bold",
                    bbox={"facecolor": COLORS[n % len(COLORS)], "alpha": 0.8, "pad": 1, "lw": 0})
    truth = meta.class_names[record.label] if 0 <= record.label < meta.num_classes else "unknown"
    title = f"{record.image_id}  (class: {truth})\nfirst {shown} of {meta.num_crops} crops; dashed = flipped"
    if (height, width) != (record.height, record.width):
        title += f"\nimage is {height}x{width}, the crops were drawn on {record.height}x{record.width}: boxes rescaled"
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def draw_crop(ax: Axes, crop: torch.Tensor, n: int, flipped: bool, note: str = "") -> None:
    """Crop ``n`` as the teacher saw it (3, s, s) uint8, titled in its box's colour."""
    ax.imshow(crop.permute(1, 2, 0).numpy())
    ax.set_title(f"crop {n}" + (" (flipped)" if flipped else "") + note, fontsize=9, color=COLORS[n % len(COLORS)])
    ax.axis("off")


def replayed_crops(meta: StoreMeta, record: ImageLabels, pixels: torch.Tensor, count: int,
                   views: "torch.Tensor | None" = None) -> torch.Tensor:
    """The first ``count`` crops replayed at the teacher's input size (count, 3, s, s) uint8, or
    the first ``count`` of ``views`` (a reinforced store's, rendered by ``fkd.labels.views``)."""
    if views is not None:
        return views[:count]
    if not count:
        return torch.empty((0, 3, *meta.input_size), dtype=torch.uint8)
    return replay_fixed(pixels, record.boxes_fixed[:count], record.flips[:count], tuple(meta.input_size), meta.interpolation)


def draw(meta: StoreMeta, record: ImageLabels, pixels: torch.Tensor, num_boxes: int, num_crops: int,
         views: "torch.Tensor | None" = None) -> Figure:
    """The figure for one record over its image ``pixels`` (3, H, W) uint8 (``views``: a reinforced
    store's first crops as rendered for the teacher)."""
    shown = min(num_boxes, meta.num_crops)
    detailed = min(num_crops, shown)
    labels = record.decoded_labels(meta.label_codec())  # as training decodes them
    bars = min(meta.num_classes, MAX_BARS, max(5, quantize.stored_top_k(meta.scheme, meta.top_k, meta.num_classes)))

    rows = max(detailed, 1)
    fig = plt.figure(figsize=(13, max(4.5, 2.3 * rows)), layout="constrained")
    grid = fig.add_gridspec(rows, 3, width_ratios=[2.4, 1, 1.8])
    draw_image(fig.add_subplot(grid[:, 0]), meta, record, pixels, shown, detailed)
    crops = replayed_crops(meta, record, pixels, detailed, views)
    for n in range(detailed):
        draw_crop(fig.add_subplot(grid[n, 1]), crops[n], n, bool(record.flips[n]), view_note(meta, record, n))
        probs, classes = labels[n].topk(bars)
        bar_ax = fig.add_subplot(grid[n, 2])
        names = [meta.class_names[c] for c in classes.tolist()]
        bar_ax.barh(range(bars), probs.numpy(), color=COLORS[n % len(COLORS)])
        bar_ax.set_yticks(range(bars), labels=names, fontsize=8)
        bar_ax.invert_yaxis()
        bar_ax.set_xlim(0, 1)
        bar_ax.tick_params(axis="x", labelsize=8)
        for y, p in enumerate(probs.tolist()):
            bar_ax.text(min(p, 0.8) + 0.01, y, f"{p:.3f}", va="center", fontsize=7)
        bar_ax.set_title(f"{meta.scheme} top-{bars}", fontsize=9)
    return fig


def view_note(meta: StoreMeta, record: ImageLabels, n: int) -> str:
    """A reinforced store's augmentation of crop ``n``, for its title (empty otherwise)."""
    return "" if record.views is None else "\n" + describe_view(meta, record.views, n)


def cosine_similarities(features: torch.Tensor) -> np.ndarray:
    """(N, N) cosine similarity of feature rows (N, D); a zero row is 0 to everything, itself included."""
    unit = F.normalize(features.float(), dim=1)
    return (unit @ unit.T).numpy()


def draw_embedding(meta: StoreMeta, record: ImageLabels, pixels: torch.Tensor, num_boxes: int, num_crops: int,
                   views: "torch.Tensor | None" = None) -> Figure:
    """The figure for one embedding record: image and numbered boxes, the shown crops' cosine
    similarity matrix, and the first ``num_crops`` crops with the length of their embedding."""
    shown = min(num_boxes, meta.num_crops)
    detailed = min(num_crops, shown)
    features = record.decoded_embedding()[:shown]
    similarity = cosine_similarities(features)
    rows = max(detailed, 1)
    fig = plt.figure(figsize=(15, max(5.0, 2.3 * rows)), layout="constrained")
    grid = fig.add_gridspec(rows, 3, width_ratios=[2.4, 2.4, 1])
    draw_image(fig.add_subplot(grid[:, 0]), meta, record, pixels, shown, shown)
    ax = fig.add_subplot(grid[:, 1])
    image = ax.imshow(similarity, cmap="coolwarm", vmin=-1, vmax=1)
    ax.set_xticks(range(shown), labels=[str(n) for n in range(shown)], fontsize=8)
    ax.set_yticks(range(shown), labels=[str(n) for n in range(shown)], fontsize=8)
    for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
        for n, tick in enumerate(ticks):
            tick.set_color(COLORS[n % len(COLORS)])
    if shown <= MAX_ANNOTATED:
        for (i, j), value in np.ndenumerate(similarity):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, shrink=0.7, label="cosine similarity")
    off = similarity[~np.eye(shown, dtype=bool)]
    spread = f"off-diagonal mean {off.mean():.3f}, min {off.min():.3f}" if off.size else "one crop"
    ax.set_title(f"cosine similarity of the crops' embeddings\n{meta.embedding.describe()}\n{spread}", fontsize=10)
    norms = features.norm(dim=1).tolist()
    crops = replayed_crops(meta, record, pixels, detailed, views)
    for n in range(detailed):
        draw_crop(fig.add_subplot(grid[n, 2]), crops[n], n, bool(record.flips[n]), f"{view_note(meta, record, n)}\n|embedding| = {norms[n]:.3g}")
    return fig
