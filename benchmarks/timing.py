"""Side-by-side timing of several candidates: the one helper the benchmarks use.

On a shared machine the load drifts while a benchmark runs, so candidates
are never timed one after the other. `interleave` runs rounds in which every
candidate runs once (the order rotates from round to round, so that no
candidate always follows the same one), after warm-up calls that trace and
compile. Each candidate gets its wall time (`time.perf_counter`) and the
process CPU time (`time.process_time`, steadier under load) per call; its
ratio to another candidate is the median over rounds of the ratio of the two
times measured in the same round, in which a slow drift of the load cancels.

Example:

    results = timing.interleave(
        {"copy": lambda: copy(x).numpy(), "rne": lambda: rne(x).numpy()},
        rounds=15)
    print(results["rne"].ratio_to(results["copy"]), results["copy"].median_ms)
"""

import dataclasses
import statistics
import time


@dataclasses.dataclass
class Timing:
    """The measurements of one candidate: one entry per round.

    Attributes:
        name: the candidate's name.
        seconds: wall seconds per call, one value per round.
        cpu_seconds: process CPU seconds per call, one value per round.
    """

    name: str
    seconds: list = dataclasses.field(default_factory=list)
    cpu_seconds: list = dataclasses.field(default_factory=list)

    @property
    def median(self):
        """Median wall seconds per call."""
        return statistics.median(self.seconds)

    @property
    def median_ms(self):
        """Median wall milliseconds per call."""
        return self.median * 1e3

    @property
    def cpu_median(self):
        """Median process CPU seconds per call."""
        return statistics.median(self.cpu_seconds)

    def ratio_to(self, other, *, cpu=False):
        """Median over rounds of this time / `other`'s time in the same round.

        Args:
            other: a `Timing` from the same `interleave` call.
            cpu: compare process CPU times instead of wall times.
        """
        mine, theirs = (
            (self.cpu_seconds, other.cpu_seconds) if cpu else (self.seconds, other.seconds)
        )
        return statistics.median(a / b for a, b in zip(mine, theirs))


@dataclasses.dataclass(frozen=True)
class SelfTimed:
    """What a candidate that times itself returns: its own seconds for the call.

    An explicit type, so that a candidate that happens to return a number
    (a loss, a row count) is never mistaken for its own timing.
    """

    seconds: float


def calls_for(fn, target_seconds, *, most=1000):
    """How many calls of `fn` take about `target_seconds` (at least 1).

    Times one call of `fn` (call it once before, to trace and compile).
    Use it to give a fast candidate enough calls per round to be measurable.
    """
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    return int(min(most, max(1, target_seconds // max(seconds, 1e-9))))


def interleave(candidates, *, rounds, warmup=1, calls=1):
    """Times candidates side by side in interleaved rounds.

    Args:
        candidates: dict name -> callable without arguments that runs one
            call of the candidate and returns once its work has finished
            (e.g. by fetching the result with `.numpy()`). A candidate that
            must time itself (its call includes set-up that must not count)
            returns `SelfTimed(seconds)`; any other return value is ignored
            and the call is timed from outside.
        rounds: how many timed rounds.
        warmup: untimed calls of every candidate before the first round.
        calls: calls per candidate per round (an int, or a dict name -> int
            for candidates of very different speeds); times are per call.

    Returns:
        dict name -> `Timing`, in the order of `candidates`.

    Raises:
        ValueError: if there is no candidate or no round.
    """
    names = list(candidates)
    if not names or rounds < 1:
        raise ValueError(f"interleave needs candidates and rounds >= 1; got "
                         f"{len(names)} candidates and rounds={rounds!r}.")
    per_round = calls if isinstance(calls, dict) else {name: calls for name in names}
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    results = {name: Timing(name) for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = _time_calls(candidates[name], per_round[name])
            results[name].seconds.append(wall)
            results[name].cpu_seconds.append(cpu)
    return results


def _time_calls(fn, count):
    """Wall and CPU seconds per call of `count` calls of `fn`."""
    self_timed = 0.0
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        returned = fn()
        if isinstance(returned, SelfTimed):
            self_timed += returned.seconds
    wall = time.perf_counter() - start
    cpu = time.process_time() - start_cpu
    if self_timed:
        wall = self_timed
    return wall / count, cpu / count


def machine_load():
    """The 1, 5 and 15 minute load averages (Linux), for the benchmark's header."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"
