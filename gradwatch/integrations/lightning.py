"""``GradWatchCallback``: gradwatch in a Lightning ``Trainer``, writing to the trainer's TensorBoard logger.

Example::

    from gradwatch.integrations.lightning import GradWatchCallback

    callback = GradWatchCallback()                  # options as gradwatch.watch, e.g. every=10
    trainer = lightning.pytorch.Trainer(callbacks=[callback], gradient_clip_val=1.0)
    trainer.fit(model, data)
    print(callback.watcher.report())

How it fits Lightning's loop (the ``lightning`` package, 2.x; tested with 2.6.6):

* At ``on_train_start`` (after a checkpoint given as ``ckpt_path`` has been restored) it watches the
  ``LightningModule`` and every optimizer of ``trainer.optimizers``, numbering steps from
  ``trainer.global_step``, so a resumed run continues its step axis.
* Lightning runs the forward and backward pass inside ``optimizer.step(closure)``, then its
  ``on_before_optimizer_step`` hooks, then gradient clipping (``gradient_clip_val``), then the update.
  gradwatch reads the gradients from the optimizer's own step hooks after that closure returned: the
  recorded gradients are the ones the optimizer used, clipped where clipping is on (the same values a
  callback sees after clipping, not the raw ones ``on_before_optimizer_step`` sees).
* ``accumulate_grad_batches=N``: the ``N`` backward passes of one optimizer step are one recorded step
  (Lightning zeroes the gradients at the start of each window, not between its micro-batches).
* TensorBoard: with neither ``logdir`` nor ``writer`` given, it writes through the trainer's
  ``TensorBoardLogger`` (``logger.experiment``) when there is one, on global rank 0 only; any other
  logger is left alone (findings stay in :attr:`watcher` and in warnings).
* At ``on_train_end`` (and on an exception) the watcher is closed: the last step recorded, the writer
  flushed. Manual optimization works the same way (the optimizers' hooks see every ``step()``).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from gradwatch.integrations import callback_options
from gradwatch.watcher import Watcher

__all__ = ["GradWatchCallback"]


class GradWatchCallback(Callback):  # type: ignore[misc]
    """Watch a ``LightningModule``'s gradients during ``Trainer.fit``.

    Args:
        **options: options of :class:`gradwatch.Watcher` (see :class:`gradwatch.config.Config`);
            ``start_step`` is taken from the trainer. Validated here, at construction.

    Attributes:
        watcher: the :class:`gradwatch.Watcher` of the last ``fit`` (``None`` before the first);
            it stays readable after the fit (``watcher.findings``, ``watcher.history``,
            ``watcher.report()``).

    Raises:
        TypeError, ValueError: an unknown or invalid option (as :class:`gradwatch.Watcher`).
    """

    def __init__(self, **options: Any) -> None:
        self.options = callback_options(options, "trainer.global_step")
        self.watcher: Watcher | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Watch the module and the trainer's optimizers (a restored checkpoint's step included)."""
        options = dict(self.options)
        if options.get("logdir") is None and options.get("writer") is None:
            options["writer"] = _tensorboard_writer(trainer)
        self.watcher = Watcher(pl_module, list(trainer.optimizers), start_step=trainer.global_step, **options)
        self.watcher.attach()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Record the last step and flush the writer."""
        if self.watcher is not None:
            self.watcher.close()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Close the watcher when the fit raises (hooks removed, what was recorded flushed)."""
        if self.watcher is not None:
            self.watcher.close()


def _tensorboard_writer(trainer: Trainer) -> Any:
    """The ``SummaryWriter`` of the trainer's TensorBoard logger on global rank 0, else ``None``."""
    if not trainer.is_global_zero:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            writer = logger.experiment
            if all(hasattr(writer, m) for m in ("add_scalar", "add_histogram_raw", "add_text", "flush")):
                return writer
    return None
