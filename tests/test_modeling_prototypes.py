"""PrototypeSet API: select, reorder, concatenate; fingerprints follow the content."""

import pytest
import torch

from fsod_d2.modeling import PrototypeSet


def _set(ids, names=None, weights="w", support="s"):
    ids = list(ids)
    n = len(ids)
    return PrototypeSet(
        class_ids=torch.tensor(ids),
        rpn_kernels=torch.tensor(ids, dtype=torch.float32)[:, None].expand(n, 4).clone(),
        roi_prototypes=torch.tensor(ids, dtype=torch.float32)[:, None, None, None]
        .expand(n, 3, 2, 2)
        .clone(),
        class_names=list(names) if names is not None else [f"c{i}" for i in ids],
        weights_fingerprint=weights,
        support_fingerprint=support,
    )


def _kernel_ids(p):
    """The class each row's features were computed for (rows are filled with the class id)."""
    return p.rpn_kernels[:, 0].long().tolist()


def test_select_keeps_rows_with_their_labels_in_the_given_order():
    full = _set([4, 1, 7])
    sub = full.select([7, 4])
    assert sub.class_ids.tolist() == [7, 4] and sub.class_names == ["c7", "c4"]
    assert _kernel_ids(sub) == [7, 4] and sub.roi_prototypes[:, 0, 0, 0].tolist() == [7.0, 4.0]
    assert sub.weights_fingerprint == "w" and sub.support_fingerprint not in ("", "s")
    assert full.select([4, 1, 7]) is full  # the same set: same fingerprint
    assert len(full.select([])) == 0
    with pytest.raises(ValueError, match=r"no prototype for classes \[2\]"):
        full.select([1, 2])
    with pytest.raises(ValueError, match="repeated"):
        full.select([1, 1])


def test_reorder_and_the_shuffled_control():
    full = _set([4, 1, 7])
    moved = full.reorder([2, 0, 1])
    assert moved.class_ids.tolist() == [7, 4, 1] and _kernel_ids(moved) == [7, 4, 1]
    assert moved.class_names == ["c7", "c4", "c1"]
    shuffled = full.reorder([2, 0, 1], keep_labels=True)  # class i gets class order[i]'s rows
    assert shuffled.class_ids.tolist() == [4, 1, 7] and shuffled.class_names == ["c4", "c1", "c7"]
    assert _kernel_ids(shuffled) == [7, 4, 1]
    assert len({full.support_fingerprint, moved.support_fingerprint,
                shuffled.support_fingerprint}) == 3  # fmt: skip
    assert full.reorder([0, 1, 2]) is full
    with pytest.raises(ValueError, match="not a permutation"):
        full.reorder([0, 0, 1])


def test_concatenate():
    a, b = _set([0, 2], support="sa"), _set([5], support="sb")
    both = PrototypeSet.concatenate([a, b])
    assert both.class_ids.tolist() == [0, 2, 5] and _kernel_ids(both) == [0, 2, 5]
    assert both.class_names == ["c0", "c2", "c5"] and both.weights_fingerprint == "w"
    assert both.support_fingerprint != PrototypeSet.concatenate([b, a]).support_fingerprint
    assert PrototypeSet.concatenate([a]) is a
    with pytest.raises(ValueError, match="a class is in two sets"):
        PrototypeSet.concatenate([a, _set([2])])
    with pytest.raises(ValueError, match="different weights"):
        PrototypeSet.concatenate([a, _set([5], weights="other")])
    with pytest.raises(ValueError, match="at least one"):
        PrototypeSet.concatenate([])


def test_selected_set_round_trips_through_a_file(tmp_path):
    sub = _set([4, 1, 7]).select([1, 7])
    sub.save(str(tmp_path / "p.pth"))
    loaded = PrototypeSet.load(
        str(tmp_path / "p.pth"),
        weights_fingerprint="w",
        support_fingerprint=sub.support_fingerprint,
    )
    assert loaded.class_ids.tolist() == [1, 7] and torch.equal(loaded.rpn_kernels, sub.rpn_kernels)
    assert [p.name for p in tmp_path.iterdir()] == ["p.pth"]  # no temporary file left
