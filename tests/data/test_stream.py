import pytest
import torch

from fastbind.data.stream import ChunkStream, batchify


def test_batchify_and_chunks_cover_the_stream_in_order():
    tokens = torch.arange(103)
    rows = batchify(tokens, 4)
    assert rows.shape == (4, 25) and rows[1, 0] == 25
    s = ChunkStream(tokens, batch_size=4, bptt=7)
    xs, ys = zip(*s)
    assert len(s) == 4  # 24 target columns / 7, rounded up
    assert torch.equal(torch.cat(xs, 1), rows[:, :24]) and torch.equal(torch.cat(ys, 1), rows[:, 1:25])
    assert torch.equal(s.chunk(5)[0], s.chunk(1)[0])  # wraps around: epoch 2


def test_ranks_split_rows_like_one_process():
    tokens = torch.arange(200)
    whole = ChunkStream(tokens, batch_size=4, bptt=5)
    parts = [ChunkStream(tokens, batch_size=4, bptt=5, rank=r, world_size=2) for r in range(2)]
    for i in range(len(whole)):
        assert torch.equal(torch.cat([p.chunk(i)[0] for p in parts]), whole.chunk(i)[0])


def test_bad_sizes():
    with pytest.raises(ValueError, match="divisible"):
        ChunkStream(torch.arange(100), batch_size=3, bptt=5, world_size=2)
    with pytest.raises(ValueError, match="too short"):
        batchify(torch.arange(3), 4)
