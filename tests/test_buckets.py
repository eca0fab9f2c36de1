import math

import pytest
import torch

from fastbind.buckets import BucketedNLL, bucket_names, class_buckets


def test_names_and_assignment_at_edges():
    assert bucket_names() == [">10K", "1K-10K", "100-1K", "<100"]
    counts = torch.tensor([0, 99, 100, 999, 1000, 9999, 10000, 5 * 10**6])
    assert class_buckets(counts).tolist() == [3, 3, 2, 2, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="increasing"):
        class_buckets(counts, (1000, 100))


def test_bucket_perplexities_recombine_to_overall():
    torch.manual_seed(0)
    counts = torch.randint(0, 20000, (50,))
    acc = BucketedNLL.from_counts(counts)
    all_nll = []
    for _ in range(3):
        t = torch.randint(0, 50, (4, 9))
        nll = torch.rand(4, 9) * 8
        acc.add(nll, t)
        all_nll.append(nll.flatten())
    r = acc.result()
    assert r["tokens"] == 108 and sum(b["tokens"] for b in r["buckets"]) == 108
    assert math.isclose(r["ppl"], math.exp(torch.cat(all_nll).double().mean().item()), rel_tol=1e-12)
    used = [b for b in r["buckets"] if b["tokens"]]
    recombined = math.exp(sum(b["tokens"] * math.log(b["ppl"]) for b in used) / r["tokens"])
    assert math.isclose(recombined, r["ppl"], rel_tol=1e-12)


def test_bucket_values_match_a_slow_loop():
    counts = torch.tensor([5, 500, 5000, 50000])
    acc = BucketedNLL.from_counts(counts)
    t = torch.tensor([0, 0, 1, 3, 3, 3])
    nll = torch.tensor([1.0, 3.0, 2.0, 0.5, 0.5, 1.1])
    acc.add(nll, t)
    r = {b["name"]: b for b in acc.result()["buckets"]}
    assert r["<100"]["tokens"] == 2 and math.isclose(r["<100"]["ppl"], math.exp(2.0))
    assert r["100-1K"]["tokens"] == 1 and math.isclose(r["100-1K"]["ppl"], math.exp(2.0))
    assert r["1K-10K"]["tokens"] == 0 and r["1K-10K"]["ppl"] is None
    assert math.isclose(r[">10K"]["ppl"], math.exp(2.1 / 3), rel_tol=1e-6)
