"""Model weights loading and the validation split's guarantees."""
import pytest
import torch
from torchvision.models import efficientnet_b3

from engine.errors import WeightsError
from engine.model import build_model
from engine.splits import split_images


def test_single_logit_head_and_no_sigmoid():
    model = build_model(None).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1)
    assert not any(isinstance(m, torch.nn.Sigmoid) for m in model.classifier.modules())


def test_pretrained_state_dict_is_loaded_except_the_head(tmp_path):
    torch.manual_seed(1)
    source = efficientnet_b3(weights=None)  # a torchvision B3 with its 1000-class head
    path = tmp_path / "b3.pth"
    torch.save(source.state_dict(), path)
    model = build_model(str(path))
    assert torch.equal(model.features[0][0].weight, source.features[0][0].weight)
    assert model.classifier[1].out_features == 1


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_a_wrong_weights_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "w.pth"
    if content is not None:
        path.write_bytes(content)
    else:
        torch.save({"fc.weight": torch.zeros(2, 2)}, path)  # some other network's weights
    with pytest.raises(WeightsError, match=str(path)):
        build_model(str(path))


def _data(n=400):
    keys = {i: f"train_data/{i:032x}.jpg" for i in range(n)}
    strata = {i: int(i % 4 == 0) for i in range(n)}  # 25% positives
    return keys, strata


def test_split_is_stratified_deterministic_and_seeded():
    keys, strata = _data()
    train, val = split_images(keys, strata, val_fraction=0.2, seed=0)
    assert sorted(train + val) == list(range(400)) and not set(train) & set(val)
    assert sum(strata[i] for i in val) == 20 and len(val) == 80  # 20% of each class
    assert (train, val) == split_images(keys, strata, val_fraction=0.2, seed=0)
    assert val != split_images(keys, strata, val_fraction=0.2, seed=1)[1]


def test_split_depends_on_paths_not_on_database_ids_or_order():
    keys, strata = _data()
    shifted_keys = {i + 1000: k for i, k in keys.items()}
    shifted_strata = {i + 1000: s for i, s in strata.items()}
    _, val = split_images(keys, strata, val_fraction=0.1, seed=3)
    _, val2 = split_images(shifted_keys, shifted_strata, val_fraction=0.1, seed=3)
    assert [v + 1000 for v in val] == val2


def test_limit_takes_a_stratified_subset():
    keys, strata = _data()
    train, val = split_images(keys, strata, val_fraction=0.25, seed=0, limit=100)
    assert len(train) + len(val) == 100 and sum(strata[i] for i in train + val) == 25


def test_best_epoch_is_f1_then_auc_then_the_lower_validation_loss():
    from engine.train import EpochResult, epoch_score

    def epoch(n, f1, auc, loss):
        return EpochResult(n, 0.1, loss, f1, f1, 0.5, auc, 1e-3, 1.0, 1.0, 0)

    saturated = [epoch(1, 1.0, 1.0, 0.42), epoch(2, 1.0, 1.0, 0.01), epoch(3, 1.0, 1.0, 0.05)]
    assert max(saturated, key=epoch_score).epoch == 2  # first perfect epoch is not the most confident
    assert max([epoch(1, 0.9, 0.95, 0.1), epoch(2, 0.91, 0.90, 0.5)], key=epoch_score).epoch == 2  # F1 first
    assert max([epoch(1, 0.9, 0.95, 0.5), epoch(2, 0.9, 0.90, 0.1)], key=epoch_score).epoch == 1  # then AUC
    assert max([epoch(1, 0.9, 0.9, float("nan")), epoch(2, 0.9, 0.9, 3.0)], key=epoch_score).epoch == 2


def test_byte_identical_copies_land_on_the_same_side_of_the_split():
    keys, strata = _data()
    # 60 files have a copy under another name (content hash shared); one pair's copies disagree on the label
    content = {i: f"{i % 340:040x}" if i % 340 < 60 else None for i in keys}
    for i in range(340, 400):
        content[i] = f"{(i - 340):040x}"
    strata[345] = 1 - strata[5]
    for seed in range(5):
        train, val = split_images(keys, strata, val_fraction=0.2, seed=seed, content=content)
        assert sorted(train + val) == list(range(400)) and not set(train) & set(val)
        side = {i: "val" for i in val} | {i: "train" for i in train}
        for i in range(340, 400):
            assert side[i] == side[i - 340], (seed, i)
        assert 70 <= len(val) <= 90  # still about 20%
    plain = split_images(keys, strata, val_fraction=0.2, seed=0)
    assert split_images(keys, strata, val_fraction=0.2, seed=0, content={i: None for i in keys}) == plain


def test_a_run_splits_its_images_by_content(sessions, tmp_path):
    from db import queries
    from db.models import Dataset, Image, Label, Run
    from engine.config import TrainConfig
    from engine.jobs import train_data

    with sessions.begin() as s:
        ds = Dataset(name="dups", root=str(tmp_path))
        s.add(ds)
        s.flush()
        for i in range(80):  # every image stored twice under two names
            for copy in ("a", "b"):
                im = Image(dataset_id=ds.id, rel_path=f"train_data/{copy}{i:03d}.jpg", split="train",
                           csv_row=2 * i + (copy == "b"), status="ok", sha1=f"{i:040x}")
                s.add(im)
                s.flush()
                s.add(Label(image_id=im.id, label=i % 2, source="import"))
        run = Run(dataset_id=ds.id, status="queued", config=TrainConfig(val_fraction=0.25).to_dict())
        s.add(run)
        s.flush()
        _, train_ids, val_ids = train_data(s, run)
        sha = {im.id: im.sha1 for im in queries.images(s, ds.id)}
    assert len(val_ids) == 40 and not {sha[i] for i in train_ids} & {sha[i] for i in val_ids}
