"""``GradWatchCallback`` for the Hugging Face ``Trainer`` (a ``transformers.TrainerCallback``).

Example::

    from gradwatch.integrations.transformers import GradWatchCallback

    callback = GradWatchCallback()                   # options as gradwatch.watch, e.g. every=10
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    print(callback.watcher.report())

How it fits the Trainer's loop (tested with transformers 5.25.0 and accelerate 1.16.0):

* At ``on_train_begin`` it watches the model the Trainer trains and the torch optimizer inside the
  Trainer's (accelerate's ``AcceleratedOptimizer`` is unwrapped). Steps are numbered as the Trainer
  numbers them in its logs: the update that makes ``state.global_step`` equal to N is recorded as step
  N (the first update of a fresh run is step 1; a resumed run continues its step axis).
* Per optimizer step the Trainer runs ``gradient_accumulation_steps`` backward passes, clips the
  gradients (``max_grad_norm``), calls ``optimizer.step()`` and zeroes the gradients. gradwatch reads
  the gradients in the optimizer's step hooks: one recorded step per optimizer step, holding the
  accumulated gradient as the optimizer used it (clipped when ``max_grad_norm > 0``).
* TensorBoard: with neither ``logdir`` nor ``writer`` given and the Trainer reporting to TensorBoard
  (``report_to`` includes ``"tensorboard"``), it writes a run of its own per training, named like the
  Trainer's (``<month><day>_<time>_<host>_gradwatch``), beside the Trainer's runs: in
  ``$TENSORBOARD_LOGGING_DIR`` when that variable is set, else in ``<output_dir>/runs``; on the main
  process only. Point TensorBoard at that folder to see both runs on one step axis.
* At ``on_train_end`` the watcher is closed (last step recorded, writer flushed). A run that raises
  is closed at interpreter exit, or by calling ``callback.watcher.close()``.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from transformers import TrainerCallback

from gradwatch.integrations import callback_options
from gradwatch.watcher import Watcher

__all__ = ["GradWatchCallback"]


class GradWatchCallback(TrainerCallback):  # type: ignore[misc]
    """Watch the gradients of the model a Hugging Face ``Trainer`` trains.

    Args:
        **options: options of :class:`gradwatch.Watcher` (see :class:`gradwatch.config.Config`);
            ``start_step`` comes from the trainer's state. Validated here, at construction.

    Attributes:
        watcher: the :class:`gradwatch.Watcher` of the last ``train()`` (``None`` before the first),
            readable after training.

    Raises:
        TypeError, ValueError: an unknown or invalid option (as :class:`gradwatch.Watcher`).
    """

    def __init__(self, **options: Any) -> None:
        self.options = callback_options(options, "state.global_step")
        self.watcher: Watcher | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Watch the model and the torch optimizer the Trainer uses."""
        model, optimizer = (
            kwargs.get("model"),
            kwargs.get("optimizer"),
        )  # (an AcceleratedOptimizer: unwrapped)
        options = dict(self.options)
        if options.get("logdir") is None and options.get("writer") is None:
            report_to = args.report_to if isinstance(args.report_to, (list, tuple)) else [args.report_to]
            if "tensorboard" in report_to and state.is_world_process_zero:
                base = os.environ.get("TENSORBOARD_LOGGING_DIR") or os.path.join(args.output_dir, "runs")
                run = f"{time.strftime('%b%d_%H-%M-%S')}_{socket.gethostname()}_gradwatch"
                options["logdir"] = os.path.join(os.path.expanduser(base), run)
        # the Trainer logs an update at the global_step it reaches: the first one at 1
        self.watcher = Watcher(model, optimizer, start_step=state.global_step + 1, **options)
        self.watcher.attach()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Record the last step, flush and close the writer, remove the hooks."""
        if self.watcher is not None:
            self.watcher.close()
