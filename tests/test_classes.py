"""The class space contract (fkd.data.classes): data classes must be the teacher's, or mapped onto them."""

from __future__ import annotations

from pathlib import Path

import pytest

from fkd.data.classes import ClassSpaceError, apply_class_map, check_class_space, read_class_map, store_class_names
from fkd.data.images import ImageEntry, ImageList, list_images

from conftest import make_image_folder

CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def folder(names: list[str], per_class: int = 1) -> ImageList:
    entries = [ImageEntry(f"{n}/{i}.jpg", c) for c, n in enumerate(names) for i in range(per_class)]
    return ImageList(Path("data"), entries, list(names))


def test_matching_folders_pass_and_keep_their_names() -> None:
    check_class_space(folder(CIFAR), 10, CIFAR)
    check_class_space(folder(["a", "b", "c"]), 3, None)  # a teacher without names: the count must match
    assert store_class_names(folder(["a", "b", "c"]), 3, None, mapped=False) == ["a", "b", "c"]
    assert store_class_names(folder(["a", "b", "c"]), 3, CIFAR[:3], mapped=False) == CIFAR[:3]  # the teacher's win


@pytest.mark.parametrize(
    ("data", "teacher_names", "message"),
    [
        (["cat", "dog"], CIFAR, "--data has 2 classes (cat, dog), not the teacher's 10 classes (airplane, automobile, bird, cat, ... (10 in all)): "
                                "no class folder for 'airplane', 'automobile', 'bird', 'deer', ... (8 in all); pass --class-map FILE"),
        (["cat", "dog"], None, "--data has 2 classes (cat, dog), not the teacher's 10 classes; pass --class-map"),
        (CIFAR[::-1], CIFAR, "the class names of --data differ from the teacher's (the same names in another order): 0: data 'truck' vs teacher 'airplane'"),
        ([f"n{i}" for i in range(10)], CIFAR, "the class names of --data differ from the teacher's: 0: data 'n0' vs teacher 'airplane'"),
    ],
)
def test_disagreeing_classes_are_refused_naming_them(data: list[str], teacher_names: "list[str] | None", message: str) -> None:
    with pytest.raises(ClassSpaceError) as info:
        check_class_space(folder(data), 10, teacher_names)
    assert message in str(info.value)


def test_list_labels_are_teacher_indices_and_unlabelled_data_has_nothing_to_check() -> None:
    numbered = ImageList(Path("."), [ImageEntry("a.jpg", 0), ImageEntry("b.jpg", 7)], [str(i) for i in range(8)])
    check_class_space(numbered, 10, CIFAR)  # labels 0 and 7 index the teacher's 10 classes
    with pytest.raises(ClassSpaceError, match="--data has labels up to 7 but the teacher predicts 5 classes"):
        check_class_space(numbered, 5, None)
    check_class_space(ImageList(Path("."), [ImageEntry("a.jpg")], []), 5, None)


def test_class_map_by_name_and_index_moves_labels_into_the_teacher_space(tmp_path: Path) -> None:
    path = tmp_path / "map.txt"
    path.write_text("# kitten folders\nkitten cat\npuppy, 5\n")
    mapping = read_class_map(path, ["kitten", "puppy"], 10, CIFAR)
    assert mapping == {"kitten": 3, "puppy": 5}
    images = list_images(_pets(tmp_path))
    mapped = apply_class_map(images, mapping, CIFAR)
    assert mapped.class_names == CIFAR
    assert [e.label for e in mapped.entries] == [3, 3, 5, 5]
    assert [e.image_id for e in mapped.entries] == images.image_ids
    assert images.labels.tolist() == [0, 0, 1, 1]  # the original listing is left alone
    assert store_class_names(images, 10, None, mapped=True) == [str(i) for i in range(10)]


def _pets(root: Path) -> Path:
    data = make_image_folder(root / "raw", classes=2, per_class=2)
    (data / "c0").rename(data / "kitten")
    (data / "c1").rename(data / "puppy")
    return data


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kitten cat\n", "does not map the data classes puppy"),
        ("kitten cat\nkitten dog\npuppy dog\n", ":2: data class 'kitten' is mapped twice"),
        ("kitten cat\nwolf dog\n", ":2: 'wolf' is not a class of --data (kitten, puppy)"),
        ("kitten cat\npuppy 10\n", ":2: '10' is not a teacher class: give an index in 0..9 or one of its names"),
        ("kitten\n", ":1: expected 'DATA_CLASS TEACHER_CLASS', got 'kitten'"),
    ],
)
def test_bad_class_maps_say_which_line(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "map.txt"
    path.write_text(text)
    with pytest.raises(ClassSpaceError) as info:
        read_class_map(path, ["kitten", "puppy"], 10, CIFAR)
    assert message in str(info.value)


def test_teachers_name_their_classes_from_their_config_or_timms_imagenet_synsets() -> None:
    """The names the store records and the data's folders are compared with: a factory's own
    label_names (the Keras CIFAR-10 teacher), timm's ImageNet synsets for its pretrained weights."""
    import timm

    from fkd.teacher.teachers import _class_names

    model = timm.create_model("test_resnet", pretrained=False)  # pretrained_cfg: 1000 ImageNet classes
    synsets = _class_names(model, "test_resnet.r160_in1k", 1000)
    assert synsets is not None and (len(synsets), synsets[0], synsets[-1]) == (1000, "n01440764", "n15075141")
    assert _class_names(model, None, 1000) is None  # random or checkpoint weights: what the outputs mean is unknown
    assert _class_names(timm.create_model("test_resnet", pretrained=False, num_classes=3), "x", 3) is None
    model.pretrained_cfg = {**model.pretrained_cfg, "label_names": ("a", "b", "c")}
    assert _class_names(model, None, 3) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (sorted([*CIFAR, "zebra"]), "--data has 11 classes (airplane, automobile, bird, cat, ... (11 in all)), not the teacher's 10 classes "
                                    "(airplane, automobile, bird, cat, ... (10 in all)): extra class folder 'zebra'; pass --class-map FILE"),
        (CIFAR[:-1], "--data has 9 classes (airplane, automobile, bird, cat, ... (9 in all)), not the teacher's 10 classes "
                     "(airplane, automobile, bird, cat, ... (10 in all)): no class folder for 'truck'; pass --class-map FILE"),
        (["cat", "dog", "wolf"], "not the teacher's 10 classes (airplane, automobile, bird, cat, ... (10 in all)): extra class folder 'wolf', "
                                 "no class folder for 'airplane', 'automobile', 'bird', 'deer', ... (8 in all); pass --class-map FILE"),
    ],
)
def test_a_class_count_that_differs_names_the_extra_and_missing_folders(data: list[str], message: str) -> None:
    """An 11th folder among 10 classes used to be refused by count alone, leaving the user to find it."""
    with pytest.raises(ClassSpaceError) as info:
        check_class_space(folder(data), 10, CIFAR)
    assert message in str(info.value)
