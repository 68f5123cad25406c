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


def test_tables_updated_together_match_each_alone():
    """The arithmetic runs over all tables at once (torch._foreach_*): every table must come out exactly as a RowAdam
    of its own would leave it, rows looked up twice in a step (summed gradients) and tables of different widths."""
    torch.manual_seed(0)
    widths = (8, 4, 3)
    together = [torch.nn.Embedding(20, d, sparse=True) for d in widths]
    alone = [torch.nn.Embedding(20, d, sparse=True) for d in widths]
    for a, b in zip(together, alone):
        b.weight.data.copy_(a.weight.data)
    opt = RowAdam([t.weight for t in together], lr=0.05)
    opts = [RowAdam([t.weight], lr=0.05) for t in alone]
    for _ in range(15):
        rows = torch.randperm(20)[:6]
        for tables, optimisers in ((together, [opt]), (alone, opts)):
            for o in optimisers:
                o.zero_grad()
            sum(((t(rows) - 1) ** 2).sum() + (t(rows) ** 3).sum() for t in tables).backward()
            for o in optimisers:
                o.step()
    for a, b in zip(together, alone):
        assert torch.equal(a.weight, b.weight)
