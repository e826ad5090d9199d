"""What a person (or a CI log) sees while ``pobench run`` works: one display, on stderr.

* a start line and an end line per stage node: ``[ N/M]`` (its position in the plan), the stage and
  its label, the seconds it took, the time elapsed since the run started and an ETA;
* while a model trains, its optimizer steps with the loss;
* the run's first and last lines (what will be done; where the leaderboard went).

Modes (:func:`choose_mode`): ``bar`` when stderr is a terminal (the lines scroll above a tqdm bar of
the plan, and a step bar while a model trains); ``plain`` when it is not (a CI log) or with
``--plain``: the same lines, training as a line about every tenth of its steps (or 30 s) and at its
last step, and never a carriage return or an escape sequence; ``quiet`` (``--quiet``): only errors
and the final line. ``run_suite(progress=callback)`` gets every line as a string, with no bars.

The ETA (:class:`WorkClock`) is the plan's work estimate (``Stage.work``: optimizer steps, sampled
and teacher-forced sequences, model evaluations) of the nodes still to compute, priced at the
seconds per unit measured on this run's finished stages: the same stage's rate, else the rate of
another stage with the same unit, else a prior (the default suite's rates on a 2-core CPU). The ETA
says ``(prior)`` while more than a tenth of it rests on priors (a 2-second preparation step still
unmeasured near the end does not make a measured ETA a guess). Cached nodes cost nothing.

While a run display is active, model and dataset libraries' own progress bars (transformers'
"Loading weights", hub downloads, datasets) are switched off; they come back afterwards. transformers is
quieted when the first stage is computed (:func:`computing`): a run whose stages are all cached does not
import it.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, TextIO

if TYPE_CHECKING:
    from bench.plan import Node, Plan

MODES = ("bar", "plain", "quiet")
PREFIX = "[pobench]"

#: seconds per unit before this run measured one: the default suite (SmolLM2-135M, fp32, LoRA) on
#: the 2-core AVX2 machine its results were produced on (results/default: 3-5 s per optimizer step
#: with model loading, ~0.11 s per sampled and ~0.08 s per teacher-forced sequence, ~0.19 s per
#: preference sample with its judge; the HH suite: ~0.3 s per held-out pair response, prompts of
#: ~105 tokens run once per pair)
PRIOR_SECONDS = {"train_steps": 3.5, "sft_steps": 3.5, "sampled_sequences": 0.15, "kl_sequences": 0.08,
                 "pair_sequences": 0.3, "model_evaluations": 120.0}
#: a node with no units (a preparation step, the reference scored against itself) or of unknown size
PRIOR_NODE_SECONDS = 2.0
NODE = "node"


def choose_mode(*, quiet: bool = False, plain: bool = False, stream: TextIO | None = None) -> str:
    """``quiet`` beats ``plain``; otherwise bars only on a terminal."""
    if quiet:
        return "quiet"
    stream = stream or sys.stderr
    if plain or not getattr(stream, "isatty", lambda: False)():
        return "plain"
    return "bar"


def duration(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def node_id(node: "Node") -> tuple[str, str]:
    return (node.stage, node.key)


class WorkClock:
    """Remaining seconds of a plan: its nodes' work units at measured (else prior) seconds per unit."""

    def __init__(self, plan: "Plan", done: set[tuple[str, str]]):
        from bench.stages import stage

        self.work: dict[tuple[str, str], dict[str, int | None]] = {}
        for node in plan.nodes:
            units = {k: v for k, v in stage(node.stage).work(node).items() if v != 0}
            self.work[node_id(node)] = units or {NODE: 1}
        self.todo = [node_id(n) for n in plan.nodes if node_id(n) not in done]
        self.finished: set[tuple[str, str]] = set()
        #: (stage, unit) -> [seconds, units] measured on computed nodes
        self.measured: dict[tuple[str, str], list[float]] = {}

    def rate(self, stage_name: str, unit: str) -> tuple[float, bool]:
        """Seconds per ``unit`` for ``stage_name``, and whether it is a prior."""
        own = self.measured.get((stage_name, unit))
        if own and own[1] > 0:
            return own[0] / own[1], False
        same_unit = [v for (s, u), v in self.measured.items() if u == unit and v[1] > 0]
        if same_unit and unit != NODE:
            return sum(v[0] for v in same_unit) / sum(v[1] for v in same_unit), False
        return PRIOR_SECONDS.get(unit, PRIOR_NODE_SECONDS), True

    def predict(self, key: tuple[str, str]) -> tuple[float, float]:
        """Seconds node ``key`` should take, and how many of them are priced at a prior."""
        seconds, prior = 0.0, 0.0
        for unit, amount in self.work[key].items():
            if amount is None:  # size unknown before its data is loaded: a node's worth of its stage
                own = self.measured.get((key[0], NODE))
                part = own[0] / own[1] if own and own[1] else PRIOR_NODE_SECONDS
                seconds += part
                prior += 0.0 if own else part
                continue
            rate, is_prior = self.rate(key[0], unit)
            seconds += rate * amount
            prior += rate * amount if is_prior else 0.0
        return seconds, prior

    def observe(self, key: tuple[str, str], seconds: float) -> None:
        """A computed node took ``seconds``: its units' rates now include it (seconds shared between
        several units in proportion to what the current rates predicted for each)."""
        units = self.work[key]
        if any(v is None for v in units.values()):
            entry = self.measured.setdefault((key[0], NODE), [0.0, 0])
            entry[0] += seconds
            entry[1] += 1
            return
        shares = {u: self.rate(key[0], u)[0] * a for u, a in units.items()}
        total = sum(shares.values()) or 1.0
        for unit, amount in units.items():
            entry = self.measured.setdefault((key[0], unit), [0.0, 0])
            entry[0] += seconds * shares[unit] / total
            entry[1] += amount

    def finish(self, key: tuple[str, str]) -> None:
        self.finished.add(key)

    def remaining(self, running: tuple[str, str] | None = None, running_for: float = 0.0) -> tuple[float, bool]:
        """Seconds left for every node not finished (the running one less what it has run), and
        whether more than a tenth of them is priced at priors."""
        seconds, prior = 0.0, 0.0
        for key in self.todo:
            if key in self.finished:
                continue
            s, p = self.predict(key)
            if key == running:
                s, p = max(0.0, s - running_for), min(p, max(0.0, s - running_for))
            seconds += s
            prior += p
        return seconds, prior > 0.1 * seconds

    def total_units(self) -> dict[str, int | None]:
        units: dict[str, int | None] = {}
        for key in self.todo:
            for unit, amount in self.work[key].items():
                if unit == NODE:
                    continue
                known = units.get(unit, 0)
                units[unit] = None if amount is None or known is None else known + amount
        return units


class StepProgress:
    """A training run's optimizer steps (``advance(step, metrics)`` after logged steps; ``close()``)."""

    def advance(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


class _TqdmSteps(StepProgress):
    """The trainer's own bar when no run display is active (``pobench train``, library use)."""

    def __init__(self, total: int, initial: int, desc: str, disable: bool, position: int | None = None,
                 leave: bool = True):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, disable=disable,
                        position=position, leave=leave, file=sys.stderr)

    def advance(self, step: int, metrics: dict[str, float]) -> None:
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()})

    def close(self) -> None:
        self.bar.close()


class _LineSteps(StepProgress):
    """Training progress as lines: about every tenth of the steps, or 30 s, and the last step."""

    INTERVAL_S = 30.0

    def __init__(self, display: "RunDisplay", total: int, initial: int, desc: str):
        self.display, self.total, self.desc = display, total, desc
        self.every = max(1, math.ceil(total / 10))
        self.started, self.first = time.monotonic(), initial
        self.last_line = self.started

    def advance(self, step: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if not (step == self.total or step % self.every == 0 or now - self.last_line >= self.INTERVAL_S):
            return
        self.last_line = now
        per_step = (now - self.started) / max(1, step - self.first)
        values = "".join(f", {k} {v:.4g}" for k, v in metrics.items())
        self.display.line(f"{PREFIX}          {self.desc}: step {step}/{self.total}{values} ({per_step:.2f} s/step)")


class RunDisplay:
    """The one display of a run (see the module docstring). Use as a context manager."""

    def __init__(self, mode: str = "plain", callback: Callable[[str], None] | None = None,
                 stream: TextIO | None = None):
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r}: one of {MODES}")
        self.mode = "plain" if callback is not None and mode == "bar" else mode
        self.callback, self.stream = callback, stream or sys.stderr
        self.started = time.monotonic()
        self.clock: WorkClock | None = None
        self.index: dict[tuple[str, str], int] = {}
        self.total = 0
        self.known_done: set[tuple[str, str]] = set()
        self.running: tuple["Node", float] | None = None
        self.running_nodes: dict[Any, tuple["Node", float]] = {}
        self.jobs = 1
        self.bar: Any = None
        self._restore: contextlib.ExitStack | None = None
        self._quiet: quiet_libraries | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "RunDisplay":
        global _ACTIVE
        self._restore = contextlib.ExitStack()
        self._quiet = self._restore.enter_context(quiet_libraries(self.mode == "quiet", lazy=True))
        self._previous, _ACTIVE = _ACTIVE, self
        return self

    def __exit__(self, *exc: Any) -> None:
        global _ACTIVE
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        _ACTIVE = self._previous
        if self._restore is not None:
            self._restore.close()

    # -- output ----------------------------------------------------------------------------------
    def line(self, message: str, *, always: bool = False) -> None:
        """One line of the run's log (``always``: also in quiet mode: errors and the final line)."""
        if self.mode == "quiet" and not always:
            return
        if self.callback is not None:
            self.callback(message)
        elif self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def times(self) -> str:
        text = f"elapsed {duration(self.elapsed())}"
        if self.clock is None:
            return text
        running = self.running
        left, prior = self.clock.remaining(node_id(running[0]) if running else None,
                                           time.monotonic() - running[1] if running else 0.0)
        left /= self.jobs
        return f"{text}, ETA {duration(left)}" + (" (prior)" if prior else "")

    # -- the plan --------------------------------------------------------------------------------
    def plan(self, plan: "Plan", done: set[tuple[str, str]]) -> None:
        """The nodes to come (``done``: already in the store) and the work they hold."""
        self.clock = WorkClock(plan, done)
        executor = plan.suite.executor
        self.jobs = executor.jobs if executor.kind == "local" else 1  # the ETA: stages side by side
        self.index = {node_id(n): i for i, n in enumerate(plan.nodes, 1)}
        self.total = len(plan.nodes)
        self.known_done = set(done)
        if self.mode == "bar" and self.callback is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=f"{PREFIX} stages", file=self.stream, dynamic_ncols=True,
                            position=0, bar_format="{desc} {n_fmt}/{total_fmt} |{bar}|{postfix}")
            self.bar.set_postfix_str(self.times(), refresh=True)

    def work_summary(self) -> str:
        units = self.clock.total_units() if self.clock else {}
        left = ", ".join(f"{k} {'unknown' if v is None else v}" for k, v in units.items())
        todo = len(self.clock.todo) if self.clock else 0
        return (f"{todo} of {self.total} stages to compute" + (f" ({left})" if left else "")
                + f"; {self.times()}")

    def _tag(self, node: "Node") -> str:
        width = len(str(self.total))
        return f"{PREFIX} [{self.index.get(node_id(node), 0):>{width}}/{self.total}]"

    def stage_started(self, node: "Node") -> None:
        self.running = (node, time.monotonic())
        self.running_nodes[node_id(node)] = self.running  # several with executor.jobs > 1
        if node_id(node) in self.known_done:  # a cached node: its end line says so
            return
        work = self.clock.work.get(node_id(node), {}) if self.clock else {}
        size = ", ".join(f"{'?' if v is None else v} {k}" for k, v in work.items() if k != NODE)
        self.line(f"{self._tag(node)} start  {node.stage:<9} {node.label}" + (f" ({size})" if size else "")
                  + f" | {self.times()}")

    def stage_finished(self, node: "Node", status: str, seconds: float) -> None:
        key = node_id(node)
        if self.clock is not None:
            if status == "done":
                self.clock.observe(key, seconds)
            self.clock.finish(key)
        self.running_nodes.pop(key, None)
        self.running = next(reversed(self.running_nodes.values()), None)
        self.line(f"{self._tag(node)} {status:<6} {node.stage:<9} {node.label} {seconds:.1f}s | {self.times()}")
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(self.times(), refresh=True)

    def stage_failed(self, error: BaseException) -> None:
        """The running node raised: one line naming it (also in quiet mode) and the error's kind; the
        message itself is the command's last line (or its traceback), so it is not printed twice."""
        if self.running is None:
            return
        node, since = next((entry for entry in self.running_nodes.values()
                            if entry[0].label == getattr(error, "pobench_stage", None)), self.running)
        kind = "interrupted" if isinstance(error, KeyboardInterrupt) else type(error).__name__
        self.line(f"{self._tag(node)} failed {node.stage:<9} {node.label} after {time.monotonic() - since:.1f}s: "
                  f"{kind}", always=True)

    def training(self, total: int, initial: int, desc: str) -> StepProgress:
        desc = self.running[0].label if self.running else desc
        if self.mode == "quiet":
            return StepProgress()
        if self.mode == "bar" and self.callback is None:
            return _TqdmSteps(total, initial, f"  {desc}", disable=False, position=1, leave=False)
        return _LineSteps(self, total, initial, desc)


_ACTIVE: RunDisplay | None = None


def active() -> RunDisplay | None:
    return _ACTIVE


def training_progress(total: int, initial: int, desc: str, enabled: bool, main_process: bool = True
                      ) -> StepProgress:
    """The trainer's step display: the active run display's (a step bar, or lines in a log), else
    its own tqdm bar when ``enabled``. Only the main process shows anything."""
    if not main_process:
        return StepProgress()
    if _ACTIVE is not None:
        return _ACTIVE.training(total, initial, desc)
    return _TqdmSteps(total, initial, desc, disable=not enabled)


def computing() -> None:
    """A stage is about to be computed (it loads models): the active display quiets transformers now, which
    it leaves unimported until then (:class:`quiet_libraries`, ``lazy``)."""
    if _ACTIVE is not None and _ACTIVE._quiet is not None:
        _ACTIVE._quiet.include_transformers()


def note(message: str) -> None:
    """A line from deep inside a stage (e.g. a resumed training run): through the active display, else stderr."""
    if _ACTIVE is not None:
        _ACTIVE.line(message)
    else:
        print(message, file=sys.stderr, flush=True)


class quiet_libraries(contextlib.AbstractContextManager):
    """Switch off transformers' / the hub's / datasets' progress bars (and with ``errors_only`` their
    warnings and info logs) for the block, then restore them. datasets reads its switch once, when it
    is imported: if that happens during the block (``HF_DATASETS_DISABLE_PROGRESS_BARS=1`` set here),
    its bars stay off for the rest of the process.

    ``lazy``: transformers (about a second to import) is quieted when it is already imported, else only
    when :meth:`include_transformers` is called (a stage about to be computed calls :func:`computing`),
    so a run whose stages are all cached never imports it. Imported meanwhile without that call, its
    bars are put back when the block ends as they would be without it."""

    def __init__(self, errors_only: bool = False, lazy: bool = False) -> None:
        self.errors_only, self.lazy = errors_only, lazy
        self._transformers: tuple[Any, int, bool] | None = None  # (its logging module, verbosity, bars were on)

    def __enter__(self) -> "quiet_libraries":
        import warnings

        from huggingface_hub import utils as hub_utils

        self._transformers_before = "transformers.utils.logging" in sys.modules
        self._hub_bars_were_on = not hub_utils.are_progress_bars_disabled()
        if not self.lazy or self._transformers_before:
            self.include_transformers()
        hub_utils.disable_progress_bars()
        self._datasets_tqdm = sys.modules.get("datasets.utils.tqdm")
        self._datasets_were_off = self._datasets_tqdm.are_progress_bars_disabled() if self._datasets_tqdm else True
        if self._datasets_tqdm is not None:
            self._datasets_tqdm.disable_progress_bars()
        else:
            os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        if self.errors_only:
            warnings.simplefilter("ignore")
        return self

    def include_transformers(self) -> None:
        """Quiet transformers now (imports it; once)."""
        if self._transformers is not None:
            return
        from transformers.utils import logging as hf_logging

        # imported during the block, its bars started off because the hub's were: they were on before
        bars_were_on = hf_logging.is_progress_bar_enabled() if self._transformers_before else self._hub_bars_were_on
        self._transformers = (hf_logging, hf_logging.get_verbosity(), bars_were_on)
        hf_logging.disable_progress_bar()  # the hub's bars too
        if self.errors_only:
            hf_logging.set_verbosity_error()

    def __exit__(self, *exc: Any) -> None:
        from huggingface_hub import utils as hub_utils

        try:
            if self._transformers is not None:
                hf_logging, verbosity, bars_were_on = self._transformers
                hf_logging.set_verbosity(verbosity)
                if bars_were_on:
                    hf_logging.enable_progress_bar()
            elif self._hub_bars_were_on and "transformers.utils.logging" in sys.modules:
                sys.modules["transformers.utils.logging"].enable_progress_bar()  # imported meanwhile: as before
            if self._hub_bars_were_on:
                hub_utils.enable_progress_bars()
            if not self._datasets_were_off:
                self._datasets_tqdm.enable_progress_bars()
        finally:
            self._warnings.__exit__(*exc)
