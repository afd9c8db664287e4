"""Progress bars that write to the user's terminal, and stay quiet otherwise or with --quiet."""

import sys


class Progress:
    """Hands out tqdm bars on one stream; disabled when not a terminal or when quiet."""

    def __init__(self, stream=None, quiet=False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.enabled = not quiet and hasattr(self.stream, "isatty") and self.stream.isatty()

    def line(self, text):
        """One plain line where no bar is shown (a CI log), so a long stage visibly moves; not with --quiet."""
        if not self.quiet and not self.enabled:
            print(text, file=self.stream, flush=True)

    def warn(self, text):
        """A warning line on the user's terminal, shown even with --quiet."""
        print(f"warning: {text}", file=self.stream, flush=True)

    def bar(self, total, desc, unit="it"):
        from tqdm import tqdm

        return tqdm(
            total=total, desc=desc, unit=unit, file=self.stream, disable=not self.enabled,
            leave=False, dynamic_ncols=True,
        )


def keras_callback(progress, desc, epochs, steps_per_epoch):
    """A Keras callback that drives one bar over all batches of all epochs."""
    import keras

    class _Bar(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.bar = progress.bar(epochs * steps_per_epoch, desc, unit="step")

        def on_train_batch_end(self, batch, logs=None):
            self.bar.update(1)

        def on_epoch_end(self, epoch, logs=None):
            acc = (logs or {}).get("val_accuracy")
            if acc is not None:
                self.bar.set_postfix(epoch=epoch + 1, val_acc=f"{acc:.3f}")

        def on_train_end(self, logs=None):
            self.bar.close()

    return _Bar()
