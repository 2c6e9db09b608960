"""Training length by measurement: validation accuracy per field during training, the best weights kept, an early stop.

Without `--epochs`, a run trains until the task's own per-field accuracy on (the first rows of) the validation split
stops improving: from `min_epochs` on, every `val_every` steps (and at the last step) the model in training decodes
those rows through the contract (the same `Predictor` and constrained decoder as eval and serving; the scoring comes
from the caller, see `Validator`), the mean field accuracy is compared with the last gain's (a gain is
`GAIN_ANSWERS` more right answers), the best measured weights are kept in memory, and training stops `patience`
measurements after the last gain, or at once when every field is right, but never before `min_epochs`.
The learning-rate schedule is planned over `max_epochs`, so a stop comes before the schedule has annealed: when the
rule fires, the learning rate falls linearly to 0 over `cooldown` more steps, the annealed weights are measured once
more and kept unless the best measured beats them by a gain (the end of `max_epochs` is annealed by the schedule and
judged the same way). At the end the kept weights are put back before saving.

Under a launcher every process measures the same rows with the same weights, so all of them stop at the same step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from schemabuild.predictor import Predictor
from schemabuild.train.settings import GAIN_ANSWERS, LENGTH_DEFAULTS, TrainConfig


class Validator(Protocol):
    """What the trainer needs to measure: the validation inputs, and a scorer of answers to them."""

    texts: list[str]

    def __call__(self, answers: list) -> dict[str, Any]:
        """{"fields": {path: accuracy}, "exact_match": float, ...} for one answer per text."""
        ...


@dataclasses.dataclass
class LengthPlan:
    """How long a training runs: fixed (`--epochs`) or measured (no --epochs and a validation split to measure on)."""

    measured: bool
    epochs: float
    """The epochs the trainer (and its learning-rate schedule) plans: --epochs, or the measured length's maximum."""
    steps_per_epoch: int
    min_steps: int = 0
    val_every: int = 0
    patience: int = 0
    cooldown: int = 0
    """Steps of learning-rate cool-down after the stop rule fires (0: stop at once)."""
    why: str = ""
    """One line: how the length is decided."""


def plan_length(cfg: TrainConfig, kind: str, fixed_default: float, rows: int, per_step: int,
                validator: Validator | None, device: str = "cpu") -> LengthPlan:
    """The length plan for `rows` training rows at `per_step` rows per optimizer step (`kind`: "lora" or "tiny")."""
    steps_per_epoch = max(1, math.ceil(rows / per_step))
    if cfg.epochs is not None:
        return LengthPlan(False, cfg.epochs, steps_per_epoch, why=f"{cfg.epochs:g} epochs (--epochs)")
    if validator is None or not validator.texts:
        return LengthPlan(False, fixed_default, steps_per_epoch,
                          why=f"{fixed_default:g} epochs (no validation split to measure the length on)")
    d = LENGTH_DEFAULTS[kind]
    longest = d["max_epochs"]["cuda" if device == "cuda" else "cpu"]
    max_epochs = cfg.max_epochs if cfg.max_epochs is not None else max(longest, cfg.min_epochs or 0)
    min_epochs = min(cfg.min_epochs if cfg.min_epochs is not None else d["min_epochs"], max_epochs)
    val_every = cfg.val_every or max(1, round(steps_per_epoch * d["val_every"]))
    patience = cfg.patience or d["patience"]
    cooldown = cfg.cooldown if cfg.cooldown is not None else round(steps_per_epoch * d["cooldown"])
    min_steps = math.ceil(min_epochs * steps_per_epoch)
    why = (f"measured: until validation accuracy stops improving ({len(validator.texts)} val rows every {val_every} "
           f"steps, patience {patience}{f', then {cooldown} steps of cool-down' if cooldown else ''}; "
           f"{min_epochs:g}-{max_epochs:g} epochs of {steps_per_epoch} steps)")
    return LengthPlan(True, max_epochs, steps_per_epoch, min_steps, val_every, patience, cooldown, why)


def mean_accuracy(measure: dict) -> float:
    """The one number a measurement is judged by: the mean accuracy over the task's fields."""
    values = [v for v in measure["fields"].values() if v is not None]
    return sum(values) / len(values) if values else 0.0


def is_gain(score: float, best: float, rows: int, fields: int) -> bool:
    """At least GAIN_ANSWERS more right answers (net, over rows x fields) than the best: one answer flipping back and
    forth between measurements is noise, and would keep resetting the patience."""
    return score >= best + GAIN_ANSWERS / (max(1, rows) * max(1, fields)) - 1e-9


def stop_reason(point: dict, since_gain: int, gain_step: int, patience: int) -> str | None:
    """Why training stops after this measurement (past the minimum length), or None to go on."""
    if point["perfect"]:
        return f"every validation field right at step {point['step']}"
    if since_gain >= patience:
        return f"no gain in {patience} measurements since step {gain_step}"
    return None


def cool_down(scheduler, start: int, end: int) -> bool:
    """From step `start` on, scale the schedule's learning rate linearly down to 0 at step `end` (False when the
    scheduler is not a LambdaLR, whose factors can be rewritten)."""
    while hasattr(scheduler, "scheduler"):  # accelerate's AcceleratedScheduler wraps the Trainer's
        scheduler = scheduler.scheduler
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if not lambdas or end <= start:
        return False

    def cooled(planned):
        at_start = planned(start)
        return lambda step: planned(step) if step < start else at_start * max(0.0, (end - step) / (end - start))

    scheduler.lr_lambdas = [cooled(f) for f in lambdas]
    return True


def make_point(measure: dict, state, loss: float | None, seconds: float) -> dict:
    """One point of the curve: the step, the last logged loss and the measurement's scores."""
    score = mean_accuracy(measure)
    return {"step": state.global_step, "epoch": round(state.epoch or 0, 3), "loss": loss, "val_score": round(score, 4),
            "val_exact": measure.get("exact_match"), "val_fields": measure["fields"], "seconds": round(seconds, 2),
            "perfect": score >= 1.0 and (measure.get("exact_match") or 0) >= 1.0}


def log_point(point: dict, gain: bool, log_path: Path) -> None:
    """One progress line per measurement, and its line in train_log.jsonl."""
    fields = "  ".join(f"{k} {v:.3f}" for k, v in point["val_fields"].items() if v is not None)
    # through tqdm, so the line lands above the training bar instead of at its end
    tqdm.write(f"val step {point['step']}: {fields}  exact {point['val_exact'] or 0:.3f}"
               f"{'  (best)' if gain else ''}  [{point['seconds']:.0f}s]")
    with log_path.open("a") as f:
        f.write(json.dumps({"step": point["step"], "epoch": point["epoch"], "val": point}) + "\n")


def keeps(score: float, best_score: float | None, annealed: bool, rows: int, fields: int) -> bool:
    """Whether a measurement's weights replace the kept ones: the best measured, except that the last, annealed weights
    (after a cool-down or at the end of the schedule) are kept unless the best measured beats them by a gain."""
    if best_score is None:
        return True
    return not is_gain(best_score, score, rows, fields) if annealed else score > best_score + 1e-9


def decode_rows(predictor, model, texts: list[str]) -> list:
    """The model in training answers the validation rows in eval mode, then goes back to training."""
    was_training = model.training
    model.eval()
    with warnings.catch_warnings():  # the decoder's cache argument, seen through TRL's patched forward
        warnings.simplefilter("ignore", FutureWarning)
        answers = predictor.predict_many(texts, progress=False)
    if was_training:
        model.train()
    return answers


def put_back(model, weights: dict) -> None:
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in weights:
                param.copy_(weights[name])


def curve_callback(task, tokenizer, contract: dict, validator: Validator, plan: LengthPlan, device: str,
                   log_path: Path, main: bool):
    """The TrainerCallback that measures, keeps the best weights, stops (after a cool-down); `.summary()` and
    `.restore_best(model)` after training."""
    from transformers import TrainerCallback

    def say(line: str) -> None:
        if main:
            tqdm.write(line)

    class Curve(TrainerCallback):
        def __init__(self):
            self.points: list[dict] = []
            self.best: dict | None = None  # the kept point; its weights in best_weights
            self.best_weights, self.best_score = None, None
            self.gain_score, self.gain_step, self.since_gain = 0.0, 0, 0  # the last real gain (see is_gain)
            self.stopped: str | None = None
            self.cooling: tuple[int, int, str] | None = None  # (from step, to step, why the rule stopped)
            self.last_loss: float | None = None
            self.predictor = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.last_loss = logs["loss"]

        def on_step_end(self, args, state, control, model=None, lr_scheduler=None, **kwargs):
            step, last = state.global_step, state.max_steps
            if self.cooling is not None:
                if step >= self.cooling[1]:
                    self.measure(model, state, annealed=True)
                    self.stopped = f"{self.cooling[2]}; then {self.cooling[1] - self.cooling[0]} steps of cool-down"
                    control.should_training_stop = True
                return
            # the first measurement is at the minimum length (one before could neither stop nor be kept)
            if step < last and (step % plan.val_every or step < plan.min_steps):
                return
            point = self.measure(model, state, annealed=step >= last)
            why = stop_reason(point, self.since_gain, self.gain_step, plan.patience) if step < last else None
            end = min(step + plan.cooldown, last)
            if why and plan.cooldown and cool_down(lr_scheduler, step, end):
                self.cooling = (step, end, why)
                say(f"stopping: {why}; first the learning rate cools down to 0 over {end - step} steps")
            elif why:
                self.stopped, control.should_training_stop = why, True
                say(f"stopping: {why}")

        def measure(self, model, state, annealed: bool = False) -> dict:
            start = time.perf_counter()
            if self.predictor is None:  # no prefix cache: the weights change between measurements
                self.predictor = Predictor(task, model, tokenizer, contract, device=device, prefix_cache=0)
            measure = validator(decode_rows(self.predictor, model, validator.texts))
            point = make_point(measure, state, self.last_loss, time.perf_counter() - start)
            score = mean_accuracy(measure)  # unrounded: the gain rule counts answers exactly
            rows, scored = len(validator.texts), sum(v is not None for v in measure["fields"].values())
            # the patience counts measurements since the last real gain
            if self.best is None or is_gain(score, self.gain_score, rows, scored):
                self.gain_score, self.gain_step, self.since_gain = score, point["step"], 0
            else:
                self.since_gain += 1
            if kept := keeps(score, self.best_score, annealed, rows, scored):
                self.best, self.best_score = point, score
                self.best_weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            self.points.append(point)
            if main:
                log_point(point, kept, log_path)
            return point

        def restore_best(self, model) -> bool:
            """Put the kept weights back (True when they were not the last ones)."""
            if self.best is None or self.best is self.points[-1]:
                return False
            put_back(model, self.best_weights)
            return True

        def summary(self) -> dict:
            return {"curve": self.points, "best_step": self.best["step"] if self.best else None,
                    "best_val_score": self.best["val_score"] if self.best else None, "stopped": self.stopped,
                    "cooldown": list(self.cooling[:2]) if self.cooling else None}

    return Curve()
