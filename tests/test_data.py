import json

import numpy as np
import pytest
import torch
from conftest import make_arrays

from zsrl.data import DatasetError, OfflineDataset, from_numpy
from zsrl.storage import new_directory


def _save(tmp_path, arrays=None, name="ds", domain="point_mass_maze"):
    ds = from_numpy(arrays or make_arrays(physics_dim=3), {"domain": domain, "collector": "test", "seed": 0})
    return ds.save(tmp_path / name)


def test_roundtrip_keeps_everything(tmp_path):
    arrays = make_arrays(physics_dim=3)
    path = _save(tmp_path, arrays)
    ds = OfflineDataset.load(path, domain="point_mass_maze")
    assert len(ds) == 64 and ds.obs_dim == 4 and ds.action_dim == 2 and ds.has_physics
    np.testing.assert_array_equal(ds.data["next", "observation"].numpy(), arrays["next_observation"])
    np.testing.assert_array_equal(ds.data["next", "physics"].numpy(), arrays["next_physics"])
    meta = json.loads((path / "meta.json").read_text())
    assert meta["num_episodes"] == 4 and meta["versions"]["torch"] == torch.__version__
    assert not list(tmp_path.glob(".*partial"))


def test_sampling_is_on_device_and_in_range(tiny_dataset):
    torch.manual_seed(0)
    batch = tiny_dataset.sample(128)
    assert batch.batch_size == torch.Size([128])
    assert batch["observation"].device == tiny_dataset.device
    idx = tiny_dataset.sample_indices(1000)
    assert idx.min() >= 0 and idx.max() < len(tiny_dataset)


def test_future_samples_stay_in_episode(tiny_dataset):
    idx = torch.arange(len(tiny_dataset))
    fut = tiny_dataset.sample_future(idx, discount=0.9)
    ep = tiny_dataset.data["episode"]
    assert (fut >= idx).all() and (ep[fut] == ep[idx]).all()
    assert (tiny_dataset.episode_end == (idx // 16) * 16 + 15).all()


def test_nan_is_reported_with_key_and_row(tmp_path):
    arrays = make_arrays()
    arrays["next_observation"][5, 1] = np.nan
    with pytest.raises(DatasetError, match="next/observation has non-finite values .* first at row 5"):
        from_numpy(arrays, {"domain": "x"})
    # a file corrupted on disk is caught on load too (by its checksum)
    path = _save(tmp_path)
    leaf = next((path / "tensors").rglob("observation.memmap"))
    data = np.memmap(leaf, dtype=np.float32, mode="r+")
    data[3] = np.nan
    data.flush()
    with pytest.raises(DatasetError, match="observation.memmap is corrupt: its sha256 differs"):
        OfflineDataset.load(path)


def test_truncated_leaf_file(tmp_path):
    path = _save(tmp_path)
    leaf = path / "tensors" / "action.memmap"
    leaf.write_bytes(leaf.read_bytes()[:100])
    with pytest.raises(DatasetError, match=r"action.memmap is truncated \(100 of 512 bytes\)"):
        OfflineDataset.load(path)


def test_wrong_domain(tmp_path):
    path = _save(tmp_path, domain="walker")
    with pytest.raises(DatasetError, match="collected on domain 'walker'.*uses domain 'point_mass_maze'"):
        OfflineDataset.load(path, domain="point_mass_maze")


def test_missing_dataset_and_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        OfflineDataset.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a zsrl dataset"):
        OfflineDataset.load(tmp_path / "empty")


def test_interrupted_write_leaves_nothing_loadable(tmp_path):
    target = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt), new_directory(target, "dataset") as tmp:
        (tmp / "meta.json").write_text("{}")
        raise KeyboardInterrupt
    assert not target.exists() and not list(tmp_path.iterdir())


def test_wrong_dtype_and_shape():
    arrays = make_arrays()
    arrays["next_observation"] = arrays["next_observation"][:, :3]
    with pytest.raises(DatasetError, match="next/observation has shape"):
        from_numpy(arrays, {"domain": "x"})
    arrays = make_arrays()
    arrays["action"] = arrays["action"] * 3
    with pytest.raises(DatasetError, match=r"actions must lie in \[-1, 1\]"):
        from_numpy(arrays, {"domain": "x"})


def test_describe(tiny_dataset):
    info = tiny_dataset.describe()
    assert info["transitions"] == 64 and info["episodes"] == 4
    assert len(info["observation"]["min"]) == 4
    assert 0 < info["coverage"]["occupied_cells_10_per_dim_top2_pca"] <= 1
