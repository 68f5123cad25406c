"""RowAdam: each latent row is optimised exactly as Adam would optimise it alone."""

import pytest
import torch

from venncell.train.row_adam import RowAdam


def test_each_row_follows_its_own_adam():
    """Rows visited at different rates (as cells are, once per epoch among many batches) must each match a dense
    Adam that saw only that row's steps; torch's SparseAdam, which bias-corrects with the table's step count,
    does not (its steps for rarely visited rows come out several times too large)."""
    torch.manual_seed(0)
    n, d, lr = 12, 3, 0.05
    target = torch.randn(n, d)
    tables = {name: torch.nn.Embedding(n, d, sparse=True) for name in ("row", "sparse")}
    tables["sparse"].weight.data.copy_(tables["row"].weight.data)
    opts = {
        "row": RowAdam(tables["row"].parameters(), lr=lr),
        "sparse": torch.optim.SparseAdam(tables["sparse"].parameters(), lr=lr),
    }
    alone = [torch.nn.Parameter(tables["row"].weight[r].detach().clone()) for r in range(n)]
    alone_opts = [torch.optim.Adam([p], lr=lr) for p in alone]
    for _ in range(60):
        rows = torch.randperm(n)[:2]
        for name, table in tables.items():
            opts[name].zero_grad()
            ((table(rows) - target[rows]) ** 2).sum().backward()
            opts[name].step()
        for r in rows.tolist():
            alone_opts[r].zero_grad()
            ((alone[r] - target[r]) ** 2).sum().backward()
            alone_opts[r].step()
    expected = torch.stack([p.detach() for p in alone])
    torch.testing.assert_close(tables["row"].weight.detach(), expected, atol=1e-5, rtol=1e-5)
    assert (tables["sparse"].weight.detach() - expected).abs().max() > 1e-3


def test_rejects_dense_gradients():
    p = torch.nn.Parameter(torch.zeros(4, 2))
    opt = RowAdam([p], lr=0.1)
    p.sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
