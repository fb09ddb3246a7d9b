"""fkd-labelgen's GPU options without a GPU: --crop-device refusals, --batch-size auto, --compile,
out-of-memory halving, --gpus-per-worker 0.25, the store's crop_device, and the GPU benchmark's refusal."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fkd.labels.cli import main as labels_main
from fkd.store import StoreMeta
from fkd.store.errors import StoreFormatError
from labelgen import driver
from labelgen import pool as pool_module
from labelgen import worker as worker_module
from labelgen.cli import build_parser, config_from_args, main
from labelgen.device_batch import DEFAULT_BATCH_SIZE, BatchMemoryError, auto_batch_size, probe_batch_size
from labelgen.messages import ShardTask
from labelgen.plan import image_refs
from labelgen.worker import LabelWorker

from conftest import REPO, make_image_folder, write_random_store
from test_labelgen_worker import layout_for, make_worker, save_tiny_teacher

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gpu-cli")
    return make_image_folder(root / "images", classes=2, per_class=2), save_tiny_teacher(root / "teacher.pth")


def parse(*flags: str):
    parser = build_parser()
    return config_from_args(parser.parse_args(["--data", "d", "--out", "o", "--teacher", "test_resnet", *flags]), parser)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_crop_device_cuda_without_a_gpu_is_one_line_before_ray(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    images = make_image_folder(tmp_path / "images", classes=2, per_class=1)
    code = main(["--data", str(images), "--out", str(tmp_path / "store"), "--teacher", "test_resnet", "--no-pretrained",
                 "--no-progress", "--crop-device", "cuda"])
    assert code == 2
    assert capsys.readouterr().err == ("fkd-labelgen: error: --crop-device cuda needs a GPU, but torch sees none on this machine: "
                                       "use --crop-device cpu\n")
    assert not ray.is_initialized() and not (tmp_path / "store").exists()


def test_crop_device_cuda_with_a_cpu_teacher_is_an_argument_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("--crop-device", "cuda", "--device", "cpu")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "fkd-labelgen: error: --crop-device cuda cuts the crops on the teacher's GPU, but --device cpu puts the teacher on the CPU: "
        "use --crop-device cpu or --device cuda")


def test_options_reach_the_run_config(capsys: pytest.CaptureFixture) -> None:
    default = parse()
    assert (default.crop_device, default.batch_size, default.compile) == ("auto", 256, False)
    config = parse("--crop-device", "cuda", "--batch-size", "auto", "--compile", "--gpus-per-worker", "0.25")
    assert (config.crop_device, config.batch_size, config.compile, config.gpus_per_worker) == ("cuda", None, True, 0.25)
    with pytest.raises(SystemExit):
        parse("--batch-size", "many")
    assert "argument --batch-size: must be a whole number or auto, got 'many'" in capsys.readouterr().err


def test_a_quarter_gpu_per_worker_puts_four_workers_on_one_gpu(monkeypatch) -> None:
    monkeypatch.setattr(driver.ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 1.0})
    assert driver.resolve_sizing(None, None, 0.25) == driver.Sizing(4, 4.0, 0.25)


def test_batch_size_auto_doubles_until_the_device_is_full() -> None:
    tried: list[int] = []

    def fits(batch: int) -> bool:
        tried.append(batch)
        return batch <= 700

    assert probe_batch_size(fits) == 512 and tried == [32, 64, 128, 256, 512, 1024]
    assert probe_batch_size(lambda batch: True) == 4096  # the cap
    with pytest.raises(BatchMemoryError, match=r"^--batch-size auto: the teacher does not fit a batch of 32 crops in GPU memory; "
                                               r"give a smaller --batch-size$"):
        probe_batch_size(lambda batch: False)
    assert auto_batch_size(lambda x: x, (224, 224), torch.device("cpu"), 1.0) == DEFAULT_BATCH_SIZE == 256


class RunsOutOfMemory:
    """A teacher forward that raises CUDA's out-of-memory error on its first ``failures`` calls with
    more than ``limit`` crops, and is the real forward otherwise."""

    def __init__(self, forward, limit: int, failures: int):
        self.forward, self.limit, self.failures, self.sizes = forward, limit, failures, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        if len(x) > self.limit and self.failures:
            self.failures -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.forward(x)


def test_out_of_memory_halves_the_batch_once_then_names_batch_size(tiny: tuple[Path, Path]) -> None:
    folder, checkpoint = tiny
    from fkd.data.images import list_images

    refs = image_refs(list_images(folder))
    reference = make_worker(checkpoint, "marginal-smoothing", num_crops=4, batch_size=8)
    task = ShardTask(0, 0, refs, layout_for(reference))
    want = reference.label_shard(task).data.records

    halving = make_worker(checkpoint, "marginal-smoothing", num_crops=4, batch_size=8)
    oom = RunsOutOfMemory(halving.target.forward, limit=4, failures=1)
    halving.target.forward = oom
    assert halving.label_shard(task).data.records == want  # the same labels, bit for bit
    assert oom.sizes == [8, 4, 4, 8]  # the first batch in two halves, the second whole

    failing = make_worker(checkpoint, "marginal-smoothing", num_crops=4, batch_size=8)
    failing.target.forward = RunsOutOfMemory(failing.target.forward, limit=0, failures=2)
    with pytest.raises(BatchMemoryError) as error:
        failing.label_shard(task)
    assert str(error.value) == ("the teacher ran out of GPU memory on a batch of 8 crops and again on half of it (4): "
                                "lower --batch-size (e.g. --batch-size 2)")


def test_compile_wraps_the_teacher_forward(tiny: tuple[Path, Path], monkeypatch) -> None:
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn: compiled.append(fn) or fn)
    worker = make_worker(tiny[1], "full")
    assert LabelWorker(replace(worker.config, compile=True)).info().batch_size == 5 and len(compiled) == 1


def meta(**changes) -> StoreMeta:
    return StoreMeta(scheme="marginal-smoothing", top_k=5, num_classes=10, class_names=[str(c) for c in range(10)], num_crops=4,
                     num_images=3, shard_size=2, teachers=[{"name": "t"}], **changes)


def test_crop_device_is_recorded_only_for_device_cut_stores() -> None:
    cpu, cuda = meta(), meta(crop_device="cuda")
    assert "crop_device" not in cpu.to_dict()  # CPU stores keep the store.json (and the readers) they had
    assert cuda.to_dict()["crop_device"] == "cuda" and StoreMeta.from_dict(cuda.to_dict()) == cuda
    assert StoreMeta.from_dict(cpu.to_dict()).crop_device == "cpu"  # and older stores, which lack the field
    assert cpu.differences(cuda) == ["crop_device"]  # never resumed with crops cut the other way
    with pytest.raises(StoreFormatError, match=r"metadata field crop_device must be one of \['cpu', 'cuda'\], got 'gpu'"):
        meta(crop_device="gpu")


def test_info_shows_where_the_crops_were_cut(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path, _ = write_random_store(tmp_path / "store")
    assert labels_main(["info", str(path)]) == 0
    assert ("crops cut:    on the CPU (torch's uint8 kernel: the CPU replay training uses, bit for bit)\n") in capsys.readouterr().out
    manifest = json.loads((path / "store.json").read_text())
    manifest["meta"]["crop_device"] = "cuda"
    (path / "store.json").write_text(json.dumps(manifest))
    assert labels_main(["info", str(path)]) == 0
    assert "crops cut:    on the GPU (device kernel: within 2 grey levels of the CPU replay training uses)\n" in capsys.readouterr().out
    assert labels_main(["info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["crop_device"] == "cuda"


def test_the_gpu_benchmark_says_in_one_line_that_it_needs_a_gpu() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "speed" / "labelgen_gpu.py"), "--short"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("labelgen_gpu.py: needs a CUDA GPU (labelgen against the teacher's forward on the device); "
                             "torch sees none on this machine\n")


class LocalRay:
    """The part of Ray WorkerPool uses, run in this process: an actor is its object, a method's
    ``.remote(...)`` its result, ``get`` the value itself."""

    util = SimpleNamespace(get_node_ip_address=lambda: "127.0.0.1")

    @staticmethod
    def remote(cls: type) -> SimpleNamespace:
        return SimpleNamespace(options=lambda **_: SimpleNamespace(remote=lambda *args: LocalActor(cls(*args))))

    @staticmethod
    def get(value: object) -> object:
        return value

    @staticmethod
    def kill(actor: object, no_restart: bool = True) -> None:
        pass


class LocalActor:
    def __init__(self, actor: object):
        self.actor = actor

    def __getattr__(self, name: str) -> SimpleNamespace:
        method = getattr(self.actor, name)
        return SimpleNamespace(remote=lambda *args, **kwargs: method(*args, **kwargs))


def test_batch_size_auto_is_probed_once_and_every_worker_runs_it(tiny: tuple[Path, Path], monkeypatch) -> None:
    """Workers that would probe different sizes (sharing a GPU, each sees the others' memory) all
    label in the first worker's size, a replacement worker too."""
    probes = iter([512, 256, 128, 64])
    monkeypatch.setattr(worker_module, "auto_batch_size", lambda *args: next(probes))
    monkeypatch.setattr(pool_module, "ray", LocalRay)
    config = replace(make_worker(tiny[1], "full").config, batch_size=None)
    pool = pool_module.WorkerPool(config, size=3, num_cpus=1, num_gpus=0)
    assert pool.teacher_info().batch_size == 512 and pool.config.batch_size == 512
    assert [actor.actor.worker.batch_size for actor in pool.actors] == [512, 512, 512]
    assert pool._replace(pool.actors[1]).actor.worker.batch_size == 512
