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


def test_factor_one_relabel_keeps_its_views_bit_for_bit():
    """f = 1 takes the views of the stored images exactly as before the multi-formation path existed."""
    torch.manual_seed(0)
    teacher = build_model("convnet", (1, 12, 12), 4, width=4).eval()
    images = torch.randn(8, 1, 12, 12)
    cfg = RelabelConfig(views=3, seed=2)
    a, b = relabel(images, teacher, 4, cfg), relabel(images, teacher, 4, cfg, factor=1)
    g = torch.Generator().manual_seed(2)
    params = sample_view_params(8, 4, (12, 12), cfg, g)
    for name in ("crop", "flip", "mix_partner", "mix_box", "mix_lam", "targets"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        if name != "targets":
            np.testing.assert_array_equal(getattr(a, name), params[name], err_msg=name)


def test_multi_formation_views_are_of_decoded_images_with_partners_in_the_prefix():
    """f = 2: V views of each decoded training image, stored as 4*V per stored image; partners are decoded
    records of blocks up to the record's own; the targets are the teacher's output on the replayed view of
    the decoded image, as the device decodes it (formats/formation.py)."""
    import formats
    from condenser.relabel import label_record
    from formats.formation import decode_images, regroup_views, to_decoded_order

    torch.manual_seed(0)
    c, k, f, v = 3, 3, 2, 3
    teacher = build_model("convnet", (1, 12, 12), c, width=4).eval()
    stored = torch.randn(k * c, 1, 12, 12)
    cfg = RelabelConfig(views=v, seed=5, mix_p=0.9)
    views = relabel(stored, teacher, c, cfg, factor=f)
    assert views.targets.shape == (k * c, f * f * v, c) and views.crop.shape == (k * c, f * f * v, 4)
    partner = views.mix_partner
    own_block = (np.arange(k * c) // c)[:, None]
    mixed = partner >= 0
    assert mixed.any() and (partner[mixed] // (c * f * f) <= np.broadcast_to(own_block, partner.shape)[mixed]).all()
    assert partner.max() >= c  # partners reach decoded records beyond the stored record numbers
    formats.views.check_partners(partner, c, factor=f)  # the file's partner rule

    decoded = to_decoded_order(decode_images(stored.numpy(), f), c)  # what runtime.load trains on
    per_decoded = regroup_views(views, c, f, to_decoded=True)
    assert per_decoded.num_views == v
    assert (per_decoded.crop[:, 0] == [0, 0, 12, 12]).all()  # view 0 of every decoded image is the plain image
    d, j = 22, 2  # decoded sample 22 // 3 = 7: stored image 1, patch 3, of class 1
    x = apply_views(decoded, [d], per_decoded.crop[d, j][None], per_decoded.flip[d, j][None],
                    per_decoded.mix_partner[d, j][None], per_decoded.mix_box[d, j][None])
    with torch.no_grad():
        want = torch.softmax(teacher(torch.from_numpy(x)), -1)[0].numpy()
    np.testing.assert_allclose(per_decoded.targets[d, j], want, atol=1e-5)

    record = label_record(cfg, views, c, (12, 12), f, "topk-u8", 2)
    assert (record["views_per_decoded_image"], record["views_per_stored_image"]) == (3, 12)
    data = formats.MDCData(dataset="t", class_names=["a", "b", "c"], image_shape=(1, 12, 12),
                           images=stored.numpy(), labels=np.tile(np.arange(c), k), mean=(0.5,), std=(0.25,),
                           pixel_encoding="float32", views=views, codec="topk-u8", topk=2, formation_factor=f)
    with _written(data) as reader:
        label_arrays = [a for n, a in reader.spec.arrays.items() if n not in ("labels", "images")]
        assert record["label_bytes_per_stored_image"] == sum(a.length for a in label_arrays) / c


def _written(data):
    import io

    import formats

    out = io.BytesIO()
    formats.encode(data).write_to(out)
    return formats.open_mdc(out.getvalue())
