"""eval.backend=torch|faiss chooses the exact k-NN of the retrieval metrics (the two backends
give the same neighbours: tests/test_retrieval.py); any other value is a one-line error naming
the key."""

from __future__ import annotations

import pytest

from dml.cli.eval import main as dml_eval

from .deploy_utils import untrained_checkpoint


def test_eval_backend_reaches_the_retrieval_metrics(tmp_path, capsys, monkeypatch):
    import dml.train.module as module

    ckpt = str(untrained_checkpoint(tmp_path / "model.ckpt", "data=synthetic"))
    used = []
    real = module.retrieval_metrics
    monkeypatch.setattr(module, "retrieval_metrics",
                        lambda *a, **kw: used.append(kw["backend"]) or real(*a, **kw))
    dml_eval([ckpt, "--accelerator", "cpu", "eval.backend=faiss", "module.nmi=false"])
    assert used == ["faiss"] and '"recall@1"' in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        dml_eval([ckpt, "--accelerator", "cpu", "eval.backend=annoy"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: eval.backend must be one of ['torch', 'faiss'], got 'annoy'"]
