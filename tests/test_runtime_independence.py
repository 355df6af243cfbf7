"""runtime stands alone: no condenser import, one model definition for both sides, a torch-free wheel."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import textwrap
import zipfile
from email.parser import Parser
from pathlib import Path

import numpy as np
import pytest
import torch

import formats
import runtime
from condenser import models as cmodels
from condenser.export import ExportSettings, export_trainer
from runtime import models as rmodels
from runtime.backends import ModelSpec
from runtime.backends.torch_backend import TorchTrainer
from runtime.models import ModelSpecError

ROOT = Path(__file__).resolve().parents[1]
SHAPE, CLASSES = (1, 8, 8), 3
# (arch, in_shape, kwargs): every option of the architectures runtime/models.py defines
VARIANTS = [
    ("convnet", (1, 28, 28), {}),
    ("convnet", SHAPE, {"width": 4, "depth": 2, "norm": "none", "act": "leakyrelu", "pool": "max"}),
    ("convnet", SHAPE, {"width": 4, "depth": 1, "norm": "batch", "act": "sigmoid", "pool": "none",
                        "first_padding": 2}),
    ("resnet-ap10", SHAPE, {"width": 4}),
    ("resnet-ap10", SHAPE, {"width": 2, "depth": 18, "norm": "none"}),
]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)


@pytest.fixture(scope="module")
def bundle() -> runtime.TrainerBundle:
    torch.set_num_threads(1)
    s = ExportSettings(arch="convnet", in_shape=SHAPE, num_classes=CLASSES, batch_size=4, seed=3,
                       model_kwargs={"width": 4, "depth": 2})
    return export_trainer(s)


@pytest.fixture(scope="module")
def mdc(tmp_path_factory, bundle) -> Path:
    rng = np.random.default_rng(0)
    n = 2 * CLASSES
    data = formats.MDCData(
        dataset="toy", class_names=[f"c{i}" for i in range(CLASSES)], image_shape=SHAPE,
        images=rng.standard_normal((n, *SHAPE)).astype(np.float32), labels=np.tile(np.arange(CLASSES), 2),
        mean=(0.5,), std=(0.25,), pixel_encoding="float32", trainer_bundle=bundle.to_bytes())
    path = tmp_path_factory.mktemp("indep") / "toy.mdc"
    formats.write_mdc(path, data)
    return path


# -------------------------------------------------------------------------------- import direction


def test_torch_training_works_with_condenser_unimportable(mdc):
    """The device path: sys.modules['condenser'] = None makes any condenser import fail outright."""
    r = _run(f"""
        import sys
        sys.modules["condenser"] = None
        import runtime
        ds = runtime.load({str(mdc)!r}, budget=2)
        model = runtime.train(ds, backend="torch", init="bundle", epochs=2, threads=1)
        assert model.steps == 4 and model.spec.arch == "convnet", (model.steps, model.spec)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "condenser" and sys.modules[m])
        assert not loaded, loaded
        print("ok")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_torch_backend_without_torch_is_a_backend_error(mdc):
    r = _run(f"""
        import sys
        sys.modules["torch"] = None
        import runtime
        try:
            runtime.train(runtime.load({str(mdc)!r}, budget=1), backend="torch", epochs=1)
        except runtime.BackendError as exc:
            print(exc)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ("the torch backend needs torch (pip install torch); "
                                "use backend='onnx' on a torch-free device")


def _imports(package: str) -> list[tuple[str, str]]:
    """(file, imported module) for every import statement under `package`/."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found += [(path.name, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found += [(path.name, f"{node.module}.{a.name}") for a in node.names]
    return found


def test_runtime_and_formats_never_import_condenser():
    bad = [(f, m) for pkg in ("runtime", "formats") for f, m in _imports(pkg) if m.split(".")[0] == "condenser"]
    assert bad == []


def test_condenser_imports_no_private_runtime_module():
    bad = [(f, m) for f, m in _imports("condenser")
           if m.split(".")[0] == "runtime" and any(p.startswith("_") for p in m.split(".")[1:])]
    assert bad == []


# -------------------------------------------------------------------------------- one definition


def test_condenser_registers_the_runtime_classes():
    assert cmodels.ConvNet is rmodels.ConvNet and cmodels.ResNetAP is rmodels.ResNetAP
    assert cmodels.Classifier is rmodels.Classifier
    for name, factory in rmodels.ARCHS.items():
        assert cmodels.REGISTRY.get(name) is factory
    assert sorted(rmodels.ARCHS) == ["convnet", "resnet-ap10"]


@pytest.mark.parametrize("arch,shape,kwargs", VARIANTS, ids=lambda v: str(v))
def test_same_seed_same_parameters_and_logits(arch, shape, kwargs):
    torch.manual_seed(7)
    server = cmodels.build_model(arch, shape, CLASSES, **kwargs).eval()
    torch.manual_seed(7)
    device = rmodels.build_model(arch, shape, CLASSES, **kwargs).eval()
    a, b = server.state_dict(), device.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert torch.equal(server(x), device(x))


def test_torch_backend_seed_reproduces_the_exported_parameters(bundle):
    """The exporter's seeded model (condenser side) and TorchTrainer's own init (runtime side) agree."""
    trainer = TorchTrainer(ModelSpec.from_bundle(bundle), params=None, seed=bundle.meta.seed, threads=1)
    assert list(trainer.spec.param_names) == list(bundle.meta.param_names)
    for p, q in zip(trainer.get_params(), bundle.params, strict=True):
        np.testing.assert_array_equal(p, q)
    x = np.random.default_rng(0).standard_normal((3, *SHAPE)).astype(np.float32)
    server = cmodels.build_model("convnet", SHAPE, CLASSES, width=4, depth=2).eval()
    with torch.no_grad():
        for p, v in zip(server.parameters(), bundle.params, strict=True):
            p.copy_(torch.from_numpy(v))
        np.testing.assert_array_equal(trainer.logits(x), server(torch.from_numpy(x)).numpy())


# ------------------------------------------------------------------------------- unbuildable specs


@pytest.mark.parametrize("arch,kwargs,match", [
    ("resnet18", {}, "model 'resnet18' has no runtime definition; the runtime builds: convnet, resnet-ap10"),
    ("convnet", {"colour": 1}, "colour"),
    ("convnet", {"norm": "layer"}, "convnet: unknown norm 'layer'"),
    ("resnet-ap10", {"depth": 12}, "resnet-ap: depth must be 10 or 18, got 12"),
])
def test_unbuildable_spec_is_a_one_line_trainer_error(arch, kwargs, match):
    spec = ModelSpec(arch=arch, in_shape=SHAPE, num_classes=CLASSES, arch_kwargs=kwargs)
    with pytest.raises(ModelSpecError, match=match) as info:
        TorchTrainer(spec, threads=1)
    assert isinstance(info.value, runtime.TrainerError) and "\n" not in str(info.value)


def test_condenser_still_raises_its_own_config_error():
    with pytest.raises(cmodels.ModelConfigError, match="convnet: input 4x4 is too small for depth 3"):
        cmodels.build_model("convnet", (1, 4, 4), CLASSES)


# ------------------------------------------------------------------------------ device distribution


@pytest.fixture(scope="module")
def device_wheel(tmp_path_factory) -> zipfile.ZipFile:
    """packaging/runtime built offline with the installed setuptools (no network, no isolation)."""
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-q", "-w", str(out), str(ROOT / "packaging" / "runtime")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = out.glob("multisize_runtime-*.whl")
    return zipfile.ZipFile(wheel)


def _metadata(wheel: zipfile.ZipFile) -> dict[str, list[str]]:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    msg = Parser().parsestr(wheel.read(name).decode())
    return {key: msg.get_all(key) or [] for key in ("Name", "Version", "Requires-Dist")}


def _requirements(meta: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """(what every install requires, what the `fast` extra adds), as bare requirement strings."""
    required = [r for r in meta["Requires-Dist"] if "extra ==" not in r]
    fast = [r.split(";")[0].strip() for r in meta["Requires-Dist"] if "extra ==" in r and "fast" in r]
    return required, fast


def test_device_wheel_requires_exactly_numpy_msgpack_onnxruntime(device_wheel):
    meta = _metadata(device_wheel)
    assert meta["Name"] == ["multisize-runtime"]
    required, fast = _requirements(meta)
    assert sorted(r.split(">")[0] for r in required) == ["msgpack", "numpy", "onnxruntime"]
    assert [r.split(">")[0] for r in fast] == ["isal"]  # the fast checksum (formats/checksum.py), optional


def test_device_wheel_holds_formats_and_runtime_and_no_command(device_wheel):
    names = device_wheel.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"formats", "runtime"}
    assert "runtime/backends/onnx_backend.py" in names and "formats/reader.py" in names
    assert not [n for n in names if n.endswith("entry_points.txt")]


def test_device_wheel_matches_the_main_distribution(device_wheel):
    """Same version, and each device requirement is the main distribution's own pin."""
    meta = _metadata(device_wheel)
    assert meta["Version"] == [importlib.metadata.version("multisize")]
    main = importlib.metadata.requires("multisize") or []
    required, fast = _requirements(meta)
    assert all(dep in main for dep in required + fast), (meta["Requires-Dist"], main)
