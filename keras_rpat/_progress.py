"""Progress of long evaluations (PGD over a test set, AutoAttack) and durations.

A leaf: no Keras, no framework, so the AutoAttack cascade (in a torch process)
and the evaluation loop share it.
"""

import sys
import time

__all__ = ["Progress", "format_duration"]


def format_duration(seconds):
    """`1h02m03s`, `2m03s` or `3s`."""
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Images done, elapsed, ETA and robust accuracy so far, one chunk at a time.

    On a terminal the line is redrawn in place; otherwise (a log file, a pipe)
    each chunk prints one plain line.

    Args:
        label: what runs, e.g. `"PGD-20"`.
        total: number of images.
        stream: where to write (default `sys.stdout`).
        clock: a `time.time`-like function (for tests).
    """

    def __init__(self, label, total, stream=None, clock=time.time):
        self.label = label
        self.total = int(total)
        self.stream = sys.stdout if stream is None else stream
        self.clock = clock
        self.start = clock()
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()

    def line(self, done, accuracy):
        """`PGD-20: 512/10000 images, 12s elapsed, ETA 3m40s, robust accuracy so far 48.24%`.

        `accuracy` is a fraction in [0, 1].
        """
        elapsed = self.clock() - self.start
        eta = elapsed / done * (self.total - done) if done else 0.0
        return (
            f"{self.label}: {done}/{self.total} images, {format_duration(elapsed)} elapsed, "
            f"ETA {format_duration(eta)}, robust accuracy so far {100.0 * accuracy:.2f}%"
        )

    def update(self, done, accuracy):
        text = self.line(done, accuracy)
        if self.interactive:
            self.stream.write("\r" + text + ("\n" if done >= self.total else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
