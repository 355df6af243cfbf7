import numpy as np
import torch

from condenser.models import build_model
from condenser.relabel import RelabelConfig, relabel, sample_view_params
from runtime.views import apply_views


def test_view_params_respect_nesting_and_identity_view():
    g = torch.Generator().manual_seed(0)
    num_classes, ipc, v = 5, 4, 6
    p = sample_view_params(num_classes * ipc, num_classes, (28, 28), RelabelConfig(views=v, mix_p=0.9), g)
    partner = p["mix_partner"]
    records = np.arange(num_classes * ipc)[:, None]
    own_block = records // num_classes
    mixed = partner >= 0
    assert mixed.any()
    assert (partner[mixed] // num_classes <= np.broadcast_to(own_block, partner.shape)[mixed]).all()
    assert (partner != np.broadcast_to(records, partner.shape)).all()  # never mixed with itself
    # view 0 is the plain image
    assert (p["crop"][:, 0] == [0, 0, 28, 28]).all() and not p["flip"][:, 0].any()
    assert (partner[:, 0] == -1).all() and (p["mix_lam"][:, 0] == 1).all()
    # crop boxes are whole pixels inside the image; lam matches the mix box area
    crop = p["crop"]
    assert (crop == np.round(crop)).all() and (crop[..., 0] + crop[..., 2] <= 28).all()
    area = p["mix_box"][..., 2] * p["mix_box"][..., 3] / (28 * 28)
    assert np.allclose(p["mix_lam"], 1 - area)


def test_targets_are_the_teachers_output_on_the_replayed_view():
    torch.manual_seed(0)
    teachers = [build_model("convnet", (1, 28, 28), 10, width=8).eval() for _ in range(2)]
    images = torch.randn(20, 1, 28, 28)
    views = relabel(images, teachers, 10, RelabelConfig(views=3, seed=1, temperature=2.0))
    assert views.targets.shape == (20, 3, 10)
    assert np.allclose(views.targets.sum(-1), 1, atol=1e-5)
    r, j = 13, 2
    x = apply_views(images.numpy(), [r], views.crop[r, j][None], views.flip[r, j][None],
                    views.mix_partner[r, j][None], views.mix_box[r, j][None])
    with torch.no_grad():
        want = torch.stack([torch.softmax(t(torch.from_numpy(x)) / 2.0, -1) for t in teachers]).mean(0)
    assert np.allclose(views.targets[r, j], want[0].numpy(), atol=1e-5)
