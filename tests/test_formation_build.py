"""A smoke build with multi-formation factor 2, end to end: condense -> relabel decoded images -> pack -> a torch-free
device process that loads the decoded prefix and trains on it with the ONNX trainer the file embeds."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

import formats
from condenser.build import BuildConfig, build
from condenser.methods.formation import decode
from condenser.profiles import get_profile
from formats.formation import to_decoded_order

ROOT = Path(__file__).resolve().parents[1]
TINY = {"condense.outer_loops": 2, "condense.inner_loops": 1, "condense.multisize.period": 1, "condense.batch_real": 8,
        "condense.width": 8, "condense.factor": 2, "relabel.views": 2}
DEVICE = """
    import sys
    sys.modules["torch"] = None  # any torch import fails outright
    import numpy as np
    import runtime
    ds = runtime.load(PATH, budget=1)
    assert (ds.ipc, len(ds), ds.stored_images.shape[0], ds.num_views) == (1, 40, 10, 2), ds
    model = runtime.train(ds, backend="onnx", epochs=1, threads=1)
    acc = runtime.evaluate(model, ds.images, ds.labels)
    assert model.steps == 1 and 0.0 <= acc <= 1.0, (model.steps, acc)
    assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "condenser") and sys.modules[m]]
    print("ok", len(ds))
"""


def test_factor_two_smoke_build_trains_on_the_device_without_torch(tmp_path: Path) -> None:
    cfg = BuildConfig(ipc=2, settings=get_profile("smoke").updated(TINY), device="cpu")
    out = build(cfg, tmp_path / "f2.mdc", log=lambda _: None)
    assert out.result.factor == 2
    with formats.open_mdc(out.path) as reader:
        assert reader.spec.formation_factor == 2 and reader.spec.views.count == 8  # 2 views x 4 patches
        relabel = reader.header["provenance"]["soft_labels"]
        assert (relabel["formation_factor"], relabel["views_per_stored_image"]) == (2, 8)
        label_arrays = [a for n, a in reader.spec.arrays.items() if n not in ("labels", "images")]
        assert relabel["label_bytes_per_stored_image"] == sum(a.length for a in label_arrays) / 10
        assert reader.trainer_bundle() is not None
        prefix = reader.read(2, formation="decoded")
    # the server's decode (condensation, relabelling) and the file's give the same training images, bit for bit
    server = decode(torch.from_numpy(prefix.stored_images), 2).numpy()
    np.testing.assert_array_equal(prefix.images, to_decoded_order(server, 10))
    assert prefix.views.mix_partner.max() < 80  # every partner is one of the 2*4*10 decoded images

    done = subprocess.run([sys.executable, "-c", textwrap.dedent(DEVICE).replace("PATH", repr(str(out.path)))],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "40"]
