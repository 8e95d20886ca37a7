"""The promotion rule: when a new model version may become the champion.

One rule for every way a version is made (training, augmented training, fine-tuning):
- it must read MNIST test at least as well as the floor (0.99 by default), in accuracy and
  macro F1, so that reuse of the MNIST model stays honest;
- with no champion yet, that is enough;
- with a validation set of telegram cells, it must read strictly more of those numbers right
  than the champion does, both read in the same run;
- without one (a fresh machine), it must be strictly better on MNIST test, and the decision
  says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Scores:
    mnist_accuracy: float
    mnist_f1: float
    validation_accuracy: float | None = None  # numbers right on the telegram validation set


@dataclass(frozen=True)
class Decision:
    promote: bool
    basis: str  # "first", "validation", "mnist", or "floor" when the candidate fails it
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def decide(candidate: Scores, champion: Scores | None, mnist_floor: float = 0.99) -> Decision:
    low = min(candidate.mnist_accuracy, candidate.mnist_f1)
    if low < mnist_floor:
        return Decision(False, "floor", f"MNIST test {low:.4f} is below the floor {mnist_floor:.4f}")
    if champion is None:
        return Decision(True, "first", "no champion yet")
    if candidate.validation_accuracy is not None and champion.validation_accuracy is not None:
        a, b = candidate.validation_accuracy, champion.validation_accuracy
        better = a > b
        return Decision(better, "validation",
                        f"validation numbers right {a:.4f} vs champion {b:.4f}"
                        + ("" if better else ": not better"))
    a, b = candidate.mnist_accuracy, champion.mnist_accuracy
    better = a > b
    return Decision(better, "mnist", f"no validation set; MNIST test {a:.4f} vs champion {b:.4f}"
                    + ("" if better else ": not better"))
