"""Shared plumbing of the benchmarks that measure one step in fresh child processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_TAG = 'BENCH '


def rss_kb() -> int:
    """The current resident set size of this process, in KiB."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') // 1024


def emit(**values: float) -> None:
    """Print a child's result on the line :func:`run_child` reads."""
    print(_TAG + json.dumps(values), flush=True)


def run_child(cmd: list[str], threads: int, memory: bool, what: str) -> dict:
    """Run one measurement in a fresh process and return what it :func:`emit`-ted.

    ``OMP_NUM_THREADS=threads``. A memory run sets ``MALLOC_MMAP_THRESHOLD_=65536``: glibc then serves every
    block over 64 KiB with mmap and returns it on free, so the RSS high-water mark follows the live tensors
    (with the default dynamic threshold, freed mid-size blocks stay in the heap and the mark also measures
    fragmentation). Exits with the child's stderr when it fails.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    if memory:
        env['MALLOC_MMAP_THRESHOLD_'] = '65536'
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f'{what} failed:\n{out.stderr[-3000:]}')
    line = [ln for ln in out.stdout.splitlines() if ln.startswith(_TAG)][-1]
    return json.loads(line[len(_TAG):])


def measure_step(step, zero_grad, measure: str) -> None:
    """Run a forward+backward ``step()`` (returns the loss) and :func:`emit` the child's measure.

    ``memory``: two steps, ``peak_mib`` = RSS high-water mark minus the RSS before the first step.
    ``time``: one warm-up and three timed steps, ``step_s`` = the best. Both emit the last ``loss``.
    """
    import resource

    base = rss_kb()
    times, value = [], None
    for i in range(2 if measure == 'memory' else 4):
        zero_grad()
        start = time.perf_counter()
        loss = step()
        loss.backward()
        if i:
            times.append(time.perf_counter() - start)
        value = float(loss.detach())
        del loss
    if measure == 'memory':
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        emit(peak_mib=(peak - base) / 1024, loss=value)
    else:
        emit(step_s=min(times), loss=value)


def run_variants(script: str, variants: list[str], options: dict, threads: int) -> dict[str, dict]:
    """Each variant's memory and time, each in a fresh ``script --child VARIANT --measure M`` process
    (``options``: the script's other command-line options, passed through)."""
    results: dict[str, dict] = {}
    for variant in variants:
        results[variant] = {}
        for measure in ('memory', 'time'):
            cmd = [sys.executable, script, '--child', variant, '--measure', measure, '--threads', str(threads)]
            for name, value in options.items():
                cmd += [f'--{name}', str(value)]
            results[variant].update(run_child(cmd, threads, memory=measure == 'memory', what=f'{variant} ({measure})'))
        print(f'{variant}: {results[variant]}', file=sys.stderr)
    return results


def print_report(results: dict[str, dict], ref_name: str, threads: int, digits: int = 2) -> None:
    """The machine line and the markdown table of peak memory and step time, each as a ratio to ``ref_name``."""
    import datetime
    import platform

    print(f'Date {datetime.date.today()}; {platform.machine()} {os.cpu_count()} cores; torch threads {threads}; '
          f'python {platform.python_version()}\n')
    ref = results.get(ref_name)
    print(f'| variant | peak memory of the step (MiB) | vs {ref_name} | step time fwd+bwd (s) | vs {ref_name} | loss |')
    print('|---|---|---|---|---|---|')
    for variant, r in results.items():
        mem = f'{r["peak_mib"] / ref["peak_mib"]:.{digits}f}x' if ref else '–'
        tim = f'{r["step_s"] / ref["step_s"]:.{digits}f}x' if ref else '–'
        print(f'| {variant} | {r["peak_mib"]:.0f} | {mem} | {r["step_s"]:.3f} | {tim} | {r["loss"]:.6f} |')
