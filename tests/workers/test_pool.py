import pytest

from workers.pool import shard


def test_shard_keeps_order_and_sizes():
    assert shard(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert shard([], 4) == []
    with pytest.raises(ValueError, match="shard_size"):
        shard([1], 0)
