"""The LightningModule: embed, score with the pluggable loss, evaluate retrieval."""

from __future__ import annotations

import importlib.util
import inspect
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch.nn.parallel import DistributedDataParallel

from dml.config_checks import check_choice
from dml.distributed import (
    broadcast_object,
    gather_batch,
    gather_in_dataset_order,
    rank_and_world_size,
)
from dml.errors import ConfigError, DivergenceError
from dml.eval import nmi, retrieval_metrics
from dml.eval.retrieval import positive_ks
from dml.losses.base import DMLLoss
from dml.models.backbone import EmbeddingNet
from dml.train.checkpointing import first_non_finite
from dml.train.seeding import epoch_seed

DIVERGENCE_FIX = "lower optimizer.lr, set trainer.gradient_clip_val, or check the inputs"


class NonFiniteLossError(DivergenceError):
    """The loss became NaN or infinite; training stops with the batch that caused it named."""


def global_batch_buffer_names(module: torch.nn.Module) -> list[str]:
    """Fully qualified names of the buffers of every loss in ``module`` that builds them from the
    global batch (:attr:`~dml.losses.base.DMLLoss.buffers_from_global_batch`: a cross-batch
    memory)."""
    return [
        f"{name}.{buffer}" if name else buffer
        for name, sub in module.named_modules()
        if isinstance(sub, DMLLoss) and sub.buffers_from_global_batch
        for buffer, _ in sub.named_buffers(recurse=False)
    ]


class DMLModule(L.LightningModule):
    """Trains ``net`` by minimising ``loss(net(x), y)`` on P×K batches; evaluates by exact cosine
    retrieval (Recall@K, MAP@R, R-Precision; NMI on test if ``nmi``).

    ``optimizer`` / ``scheduler`` are partially instantiated factories from the config; the backbone
    trains at the optimizer's LR and the head (and any loss parameters) at ``head_lr`` if given.
    A scheduler whose factory takes ``total_steps`` receives the run length in optimizer steps.
    Every training epoch starts from the RNG state ``epoch_seed(seed, epoch)``
    (:mod:`dml.train.seeding`), so a run resumed from an epoch-end checkpoint continues exactly as
    the uninterrupted run would have.

    Under DDP, ``cross_rank_mining`` (default) computes the loss on the global batch of all ranks
    (:func:`dml.distributed.gather_batch`: same loss and gradients as one process on that batch);
    ``False`` mines within each rank's shard and lets DDP average the per-rank gradients.
    Evaluation gathers every rank's embeddings in dataset order and rank 0 computes the metrics.
    """

    def __init__(
        self,
        net: EmbeddingNet,
        loss: DMLLoss,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "step",
        head_lr: float | None = None,
        eval_ks: Sequence[int] = (1, 2, 4, 8),
        nmi: bool = False,
        seed: int = 0,
        cross_rank_mining: bool = True,
        config: dict | None = None,
        eval_backend: str = "torch",
    ) -> None:
        super().__init__()
        self.net, self.loss = net, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_interval, self.head_lr = scheduler_interval, head_lr
        try:
            self.eval_ks = tuple(positive_ks(eval_ks))
        except ValueError:
            raise ConfigError(
                f"module.eval_ks must be a list of positive integers (the K of Recall@K), "
                f"got {list(eval_ks)}"
            ) from None
        self.compute_nmi, self.seed = nmi, seed
        check_choice("eval.backend", eval_backend, ("torch", "faiss"))
        if eval_backend == "faiss" and importlib.util.find_spec("faiss") is None:
            raise ConfigError("eval.backend=faiss needs faiss: pip install 'dml[faiss]'")
        self.eval_backend = eval_backend
        self.cross_rank_mining = cross_rank_mining
        self.config = config
        # A cross-batch memory is the same on every rank by construction (it enqueues the global
        # batch): DDP need not broadcast its megabytes before every step.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            self, global_batch_buffer_names(self))
        self.eval_metrics: dict[str, dict[str, float]] = {}
        #: True (dml-eval --one-shot and --show, the end-of-run retrieval grid): :meth:`_evaluate`
        #: also keeps the ``(embeddings, labels)`` of each eval loader, in dataset order, in
        #: ``eval_embeddings["val" | "test"]``.
        self.keep_eval_embeddings = False
        self.eval_embeddings: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._outputs: dict[int, list[tuple[torch.Tensor, ...]]] = defaultdict(list)
        self._step: tuple[torch.Tensor, torch.Tensor] | None = None  # this step's loss, embeddings

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # ---- training -------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        """A cross-batch memory under DDP must hold the global batch: its buffers are kept out of
        DDP's broadcast (see ``__init__``), so per-rank memories would silently drift apart."""
        distributed = self.trainer.world_size > 1
        if global_batch_buffer_names(self) and not self.cross_rank_mining and distributed:
            raise ConfigError(
                "memory=xbm under DDP keeps the global batch of all ranks: set "
                "module.cross_rank_mining=true (or drop memory=)"
            )

    def on_train_epoch_start(self) -> None:
        L.seed_everything(epoch_seed(self.seed, self.current_epoch), workers=True, verbose=False)
        self.loss.set_epoch(self.current_epoch)

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> dict[str, Any]:
        """The loss of the batch (:class:`~dml.losses.base.LossResult`): its value is minimised
        and logged with its statistics; the step's outputs also carry the triplets' cosine
        ``(S_ap, S_an)`` for callbacks (the triplet diagram)."""
        embeddings, y = self.net(batch[0]), batch[1]
        if self.cross_rank_mining:
            embeddings, y = gather_batch(embeddings, y)
        result = self.loss.result(embeddings, y)
        loss = result.value
        self._step = (loss.detach(), embeddings.detach())  # checked after the optimizer step
        self.log("train/loss", loss, prog_bar=True, batch_size=len(y))
        self.log_dict({f"train/{k}": v for k, v in result.stats.items()}, batch_size=len(y))
        return {"loss": loss, "triplet_similarities": result.triplet_similarities}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """After the optimizer step, one check (one device synchronisation, one collective under
        DDP) of the step's loss and embeddings and of every weight and buffer: training stops
        before a non-finite value (e.g. a BatchNorm running variance, which the loss does not
        see) reaches a checkpoint or the next validation."""
        loss, embeddings = self._step
        named = [("loss", loss), ("embeddings", embeddings)]
        name = first_non_finite([*named, *self.named_parameters(), *self.named_buffers()])
        if not self._diverged(name is not None):
            return
        where = (
            f"epoch {self.current_epoch}, batch {batch_idx} (global step {self.global_step}); "
            f"{DIVERGENCE_FIX}. Checkpoints on disk predate it."
        )
        if name == "loss":
            raise NonFiniteLossError(f"training diverged: the loss is {loss.item()} at {where}")
        what = {"embeddings": "an embedding", None: "a weight on another rank"}.get(name, name)
        raise DivergenceError(f"training diverged: {what} is not finite after {where}")

    def _diverged(self, here: bool) -> bool:
        """True on every rank if it is true on any (so that all ranks stop together)."""
        if self._trainer is None:  # a bare module (tests, notebooks): a single process
            return bool(here)
        return self.trainer.strategy.reduce_boolean_decision(bool(here), all=False)

    def configure_optimizers(self) -> Any:
        backbone = [p for p in self.net.backbone.parameters() if p.requires_grad]
        head = [
            p for p in [*self.net.head.parameters(), *self.loss.parameters()] if p.requires_grad
        ]
        groups = [{"params": backbone, "name": "backbone"}, {"params": head, "name": "head"}]
        if self.head_lr is not None:
            groups[1]["lr"] = self.head_lr
        optimizer = self.optimizer_factory([g for g in groups if g["params"]])
        if self.scheduler_factory is None:
            return optimizer
        kwargs = {}
        if "total_steps" in inspect.signature(self.scheduler_factory).parameters:
            steps = self.trainer.estimated_stepping_batches
            if self.scheduler_interval == "epoch":
                steps = self.trainer.max_epochs
            kwargs["total_steps"] = int(steps)
        scheduler = self.scheduler_factory(optimizer, **kwargs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }

    # ---- evaluation -----------------------------------------------------------------------
    def _collect(self, batch: Sequence[torch.Tensor], dataloader_idx: int) -> None:
        x, y, idx = batch
        self._outputs[dataloader_idx].append((self.net(x).float(), y, idx))

    def _evaluate(self, prefix: str, with_nmi: bool) -> dict[str, float]:
        embeddings = [(prefix, e) for outputs in self._outputs.values() for e, _, _ in outputs]
        if self._diverged(first_non_finite(embeddings) is not None):
            self._outputs.clear()
            raise DivergenceError(
                f"the model gives non-finite embeddings on the {prefix} images: its weights or "
                "inputs are broken"
            )
        parts = [self._gather(self._outputs[i]) for i in sorted(self._outputs)]
        self._outputs.clear()
        if self.keep_eval_embeddings:
            self.eval_embeddings[prefix] = parts
        if not parts:
            return {}
        metrics = self._metrics(parts, with_nmi) if rank_and_world_size()[0] == 0 else None
        metrics = broadcast_object(metrics)  # computed once, by rank 0
        # Identical on every rank: the "max" sync changes nothing and keeps Lightning from warning.
        logged = {f"{prefix}/{k}": v for k, v in metrics.items()}
        self.log_dict(logged, sync_dist=True, reduce_fx="max")
        self.eval_metrics[prefix] = metrics
        if not self.trainer.sanity_checking:
            shown = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())
            fitting = self.trainer.state.fn == "fit"
            when = f"epoch {self.current_epoch}" if fitting else "selected checkpoint"
            self.print(f"[{when}] {prefix}: {shown}")
        return metrics

    def _metrics(
        self, parts: list[tuple[torch.Tensor, torch.Tensor]], with_nmi: bool
    ) -> dict[str, float]:
        (q, ql), gallery = parts[0], parts[1] if len(parts) > 1 else (None, None)
        metrics = retrieval_metrics(q, ql, *gallery, ks=self.eval_ks, backend=self.eval_backend)
        if with_nmi:
            metrics["nmi"] = (
                nmi(q, ql)
                if gallery[0] is None
                else nmi(torch.cat([q, gallery[0]]), torch.cat([ql, gallery[1]]))
            )
        return metrics

    @staticmethod
    def _gather(outputs: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings and labels of one eval split in dataset order (from all ranks, duplicates
        added by distributed padding dropped)."""
        emb, labels, idx = (torch.cat(t) for t in zip(*outputs, strict=False))
        emb, labels = gather_in_dataset_order(emb, labels, idx)
        return emb.cpu(), labels.cpu()

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._evaluate("val", with_nmi=False)

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._evaluate("test", with_nmi=self.compute_nmi)

    # ---- checkpoints ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        name = first_non_finite(checkpoint["state_dict"].items())
        if name is not None:  # never written, so never selected or resumed from
            raise DivergenceError(
                f"training diverged: {name} is not finite at epoch {self.current_epoch}; the "
                f"checkpoint was not saved: {DIVERGENCE_FIX}"
            )
        checkpoint["dml_config"] = self.config

