"""Turning raw benchmark runs into medians, ratios, acceptance verdicts, a console table and RESULTS.md.

The raw results are `{workload: {contender: [run, ...]}}` where a run is the dict a child printed
(training and checkpoint workloads) or the seconds of one whole process (the import workload).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from checkpointing import LABELS as CHECKPOINT_LABELS
from contenders import LABELS as SINGLE_LABELS
from multiprocess import LABELS as MULTIPROCESS_LABELS
from multiprocess import WORKLOAD_OF

REFERENCE = "torch"
MULTIPROCESS_REFERENCE = "ddp"
TRAINING_WORKLOADS = ("tiny", "cnn", *WORKLOAD_OF)
Raw = dict[str, dict[str, list[Any]]]


def median(values: Sequence[float]) -> float:
    """The median, NaN for no values."""
    return statistics.median(values) if values else float("nan")


def _spread(values: Sequence[float]) -> str:
    return f"{min(values):.3f}–{max(values):.3f}" if values else "-"


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference == reference and reference > 0 else float("nan")


def _runs(raw: Raw, workload: str, contender: str) -> list[dict[str, Any]]:
    return [run for run in raw.get(workload, {}).get(contender, []) if "unavailable" not in run]


def reference(workload: str) -> str:
    """The contender a workload's ratios divide by: the hand-written loop of its kind (one process or DDP)."""
    return MULTIPROCESS_REFERENCE if workload in WORKLOAD_OF else REFERENCE


def _label(workload: str, contender: str) -> str:
    labels = MULTIPROCESS_LABELS if workload in WORKLOAD_OF else SINGLE_LABELS
    return labels.get(contender, contender)


def _field(raw: Raw, workload: str, contender: str, key: str) -> float:
    return median([run[key] for run in _runs(raw, workload, contender)])


@dataclass
class Verdict:
    """One acceptance target (issues 6 and 15) and whether the measurements meet it.

    `measured` is the figure the target names (wall-clock medians for times); `cpu`, where given,
    is the same comparison made with CPU time, the steadier figure on a busy machine.
    """

    target: str
    measured: str
    met: bool | None  # None: not measured
    cpu: str = "-"

    @property
    def mark(self) -> str:
        """`yes`, `NO` or `not measured`."""
        return {True: "yes", False: "NO", None: "not measured"}[self.met]


def _met(value: float, limit: float) -> str:
    return "met" if value <= limit else "missed"


def _ratio_verdict(raw: Raw, workload: str, contender: str, key: str, limit: float, target: str) -> Verdict:
    ratio = _ratio(_field(raw, workload, contender, key), _field(raw, workload, reference(workload), key))
    if ratio != ratio:
        return Verdict(target, "-", None)
    cpu = "-"
    if key == "fit_s":
        cpu_reference = _field(raw, workload, reference(workload), "fit_cpu_s")
        cpu_ratio = _ratio(_field(raw, workload, contender, "fit_cpu_s"), cpu_reference)
        cpu = f"{cpu_ratio:.3f}x ({_met(cpu_ratio, limit)})"
    return Verdict(target, f"{ratio:.3f}x", ratio <= limit, cpu)


def _import_verdict(raw: Raw) -> Verdict:
    target = "import: `import fitorch` adds <= 0.3 s to `import torch`"
    imports = raw.get("import", {})
    if not (imports.get("fitorch") and imports.get(REFERENCE)):
        return Verdict(target, "-", None)
    added = _import_median(raw, "fitorch", "wall_s") - _import_median(raw, REFERENCE, "wall_s")
    added_cpu = _import_median(raw, "fitorch", "cpu_s") - _import_median(raw, REFERENCE, "cpu_s")
    return Verdict(target, f"{added:+.3f} s", added <= 0.3, f"{added_cpu:+.3f} s ({_met(added_cpu, 0.3)})")


def _checkpoint_verdict(raw: Raw, phase: str) -> Verdict:
    target = f"checkpoint: fitorch {phase} no slower than torch.{phase}"
    key = f"{phase}_s"
    ratio = _ratio(_field(raw, "checkpoint", "fitorch", key), _field(raw, "checkpoint", REFERENCE, key))
    if ratio != ratio:
        return Verdict(target, "not available yet", None)
    return Verdict(target, f"{ratio:.3f}x", ratio <= 1.0)


def _ab_ratio(raw: Raw, workload: str, key: str) -> float:
    runs = raw.get("ab", {}).get(workload, {}).get("runs", {})
    return _ratio(
        median([r[key] for r in runs.get("fitorch_verbose0", [])]), median([r[key] for r in runs.get(REFERENCE, [])])
    )


def _ab_verdict(raw: Raw, workload: str, limit: float) -> Verdict:
    target = f"{workload}: Learner.fit(verbose=0) <= {limit:.2f}x loop, in-process A/B (issue 18)"
    ratio, cpu_ratio = _ab_ratio(raw, workload, "wall_s"), _ab_ratio(raw, workload, "cpu_s")
    if ratio != ratio:
        return Verdict(target, "-", None)
    return Verdict(target, f"{ratio:.3f}x", ratio <= limit, f"{cpu_ratio:.3f}x ({_met(cpu_ratio, limit)})")


def verdicts(raw: Raw) -> list[Verdict]:
    """The acceptance targets of issues 6, 15 (two processes) and 18, checked against the medians."""
    result = [
        _ratio_verdict(raw, "tiny", "fitorch_verbose0", "fit_s", 1.05, "tiny: Learner.fit(verbose=0) <= 1.05x loop"),
        _ratio_verdict(raw, "tiny", "fitorch", "fit_s", 1.10, "tiny: Learner.fit with progress bar <= 1.10x loop"),
        _ratio_verdict(raw, "cnn", "fitorch_verbose0", "fit_s", 1.02, "cnn: Learner.fit(verbose=0) <= 1.02x loop"),
        _ratio_verdict(raw, "cnn", "fitorch", "fit_s", 1.02, "cnn: Learner.fit with progress bar <= 1.02x loop"),
        _ratio_verdict(
            raw, "tiny", "fitorch_verbose0", "fit_s", 0.85, "tiny: Learner.fit(verbose=0) <= 0.85x loop (issue 18)"
        ),
        _ratio_verdict(
            raw, "cnn", "fitorch_verbose0", "fit_s", 1.00, "cnn: Learner.fit(verbose=0) <= 1.00x loop (issue 18)"
        ),
        _ab_verdict(raw, "tiny", 0.85),
        _ab_verdict(raw, "cnn", 1.00),
        _import_verdict(raw),
        _checkpoint_verdict(raw, "save"),
        _checkpoint_verdict(raw, "load"),
    ]
    for workload in ("tiny", "cnn"):
        for contender in ("fitorch", "fitorch_verbose0"):
            target = f"{workload}: peak RSS of {contender} <= 1.05x loop"
            result.append(_ratio_verdict(raw, workload, contender, "peak_rss_mb", 1.05, target))
    for workload, limit in (("tiny_2proc", 1.05), ("cnn_2proc", 1.02)):
        for contender, how in (("fitorch_verbose0", "Learner.fit(verbose=0)"), ("fitorch", "with progress bar")):
            target = f"{workload}: {how} <= {limit:.2f}x DDP loop"
            result.append(_ratio_verdict(raw, workload, contender, "fit_s", limit, target))
    return result


def training_rows(raw: Raw, workload: str) -> list[list[str]]:
    """One row per contender of a training workload: medians, ratios to the reference, spread, memory."""
    reference_wall = _field(raw, workload, reference(workload), "fit_s")
    reference_cpu = _field(raw, workload, reference(workload), "fit_cpu_s")
    reference_rss = _field(raw, workload, reference(workload), "peak_rss_mb")
    rows = []
    for contender, runs in raw.get(workload, {}).items():
        label = _label(workload, contender)
        unavailable = next((run["unavailable"] for run in runs if "unavailable" in run), None)
        runs = _runs(raw, workload, contender)
        if unavailable or not runs:
            rows.append([label, unavailable or "no runs", *["-"] * 8])
            continue
        wall, cpu = _field(raw, workload, contender, "fit_s"), _field(raw, workload, contender, "fit_cpu_s")
        rss = _field(raw, workload, contender, "peak_rss_mb")
        steps = runs[0]["steps"]
        rows.append(
            [
                label,
                f"{wall:.3f}",
                f"{_ratio(wall, reference_wall):.3f}",
                _spread([run["fit_s"] for run in runs]),
                f"{cpu:.3f} ({_ratio(cpu, reference_cpu):.3f})",
                f"{(wall - reference_wall) / steps * 1e6:+.0f}",
                f"{_field(raw, workload, contender, 'process_s'):.2f}",
                f"{rss:.0f}",
                f"{_ratio(rss, reference_rss):.3f}",
                f"{median([run['peak_rss_mb'] - run['rss_before_mb'] for run in runs]):.1f}",
            ]
        )
    return rows


TRAINING_HEADER = [
    "contender",
    "fit s (median)",
    "ratio",
    "fit s min–max",
    "CPU s (ratio)",
    "µs/step over loop",
    "process s",
    "peak RSS MiB",
    "RSS ratio",
    "RSS growth in fit MiB",
]


def checkpoint_rows(raw: Raw) -> list[list[str]]:
    """One row per checkpoint contender: median save and load seconds, ratios, size on disk."""
    save_ref, load_ref = (_field(raw, "checkpoint", REFERENCE, key) for key in ("save_s", "load_s"))
    rows = []
    for contender, runs in raw.get("checkpoint", {}).items():
        label = CHECKPOINT_LABELS.get(contender, contender)
        unavailable = next((run["unavailable"] for run in runs if "unavailable" in run), None)
        if unavailable or not _runs(raw, "checkpoint", contender):
            rows.append([label, unavailable or "no runs", *["-"] * 4])
            continue
        save, load = (_field(raw, "checkpoint", contender, key) for key in ("save_s", "load_s"))
        size = _field(raw, "checkpoint", contender, "size_mb")
        rows.append(
            [
                label,
                f"{save:.3f}",
                f"{_ratio(save, save_ref):.2f}",
                f"{load:.3f}",
                f"{_ratio(load, load_ref):.2f}",
                f"{size:.1f}",
            ]
        )
    return rows


CHECKPOINT_HEADER = ["contender", "save s (median)", "save ratio", "load s (median)", "load ratio", "size MiB"]


def _import_median(raw: Raw, module: str, key: str) -> float:
    return median([run[key] for run in raw.get("import", {}).get(module, [])])


def import_rows(raw: Raw) -> list[list[str]]:
    """One row per import: median and spread of whole-process seconds, and the time added to torch's."""
    wall_ref, cpu_ref = (_import_median(raw, REFERENCE, key) for key in ("wall_s", "cpu_s"))
    rows = []
    for module, runs in raw.get("import", {}).items():
        wall, cpu = (_import_median(raw, module, key) for key in ("wall_s", "cpu_s"))
        rows.append(
            [
                f"python -c 'import {module}'",
                f"{wall:.3f}",
                _spread([run["wall_s"] for run in runs]),
                f"{wall - wall_ref:+.3f}",
                f"{cpu:.3f}",
                f"{cpu - cpu_ref:+.3f}",
            ]
        )
    return rows


IMPORT_HEADER = [
    "command",
    "wall s (median)",
    "wall min–max",
    "wall added to torch",
    "CPU s (median)",
    "CPU added to torch",
]


AB_HEADER = ["workload", "rounds", "loop s (median)", "fitorch s (median)", "ratio", "CPU ratio", "other load"]


def ab_rows(raw: Raw) -> list[list[str]]:
    """The in-process A/B: per workload, the medians of the loop and of `Learner.fit(verbose=0)`."""
    rows = []
    for workload, result in raw.get("ab", {}).items():
        runs = result["runs"]
        loop, fit = (
            median([r["wall_s"] for r in runs[REFERENCE]]),
            median([r["wall_s"] for r in runs["fitorch_verbose0"]]),
        )
        load = result.get("other_load")
        rows.append(
            [
                workload,
                str(result["rounds"]),
                f"{loop:.3f}",
                f"{fit:.3f}",
                f"{_ratio(fit, loop):.3f}",
                f"{_ab_ratio(raw, workload, 'cpu_s'):.3f}",
                "-" if load is None else f"{load:.2f} cores",
            ]
        )
    return rows


WORKERS_HEADER = ["samples", "no workers (default) s", "num_workers=2 s", "ratio", "CPU s, default / 2 workers"]


def workers_rows(raw: Raw) -> list[list[str]]:
    """fit + evaluate + predict of an in-memory Dataset: the default against two worker processes."""
    rows = []
    for samples, times in raw.get("workers", {}).get("fit", {}).get("results", {}).items():
        default, two = times["default"], times["num_workers=2"]
        wall_default, wall_two = median([t["wall_s"] for t in default]), median([t["wall_s"] for t in two])
        cpu = f"{median([t['cpu_s'] for t in default]):.3f} / {median([t['cpu_s'] for t in two]):.3f}"
        rows.append(
            [
                f"{int(samples):,}",
                f"{wall_default:.3f}",
                f"{wall_two:.3f}",
                f"{_ratio(wall_two, wall_default):.2f}",
                cpu,
            ]
        )
    return rows


def load_line(raw: Raw, workload: str) -> str:
    """How busy the rest of the machine was during a workload's runs, as one sentence."""
    loads = [
        run["other_load"]
        for runs in raw.get(workload, {}).values()
        for run in runs
        if isinstance(run, dict) and run.get("other_load") is not None
    ]
    if not loads:
        return ""
    return (
        f"Other processes kept {median(loads):.2f} cores busy during these runs (median over runs; "
        f"highest {max(loads):.2f}, of {len(loads)} runs)."
    )


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain table aligned in columns, for the console."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def console_report(raw: Raw) -> str:
    """Every measured workload as plain tables, then the acceptance verdicts."""
    parts = []
    for workload in TRAINING_WORKLOADS:
        if workload in raw:
            table = text_table(TRAINING_HEADER, training_rows(raw, workload))
            parts.append(f"== {workload}  {load_line(raw, workload)}\n{table}")
    if "checkpoint" in raw:
        parts.append(
            f"== checkpoint  {load_line(raw, 'checkpoint')}\n" + text_table(CHECKPOINT_HEADER, checkpoint_rows(raw))
        )
    if "import" in raw:
        parts.append(f"== import  {load_line(raw, 'import')}\n" + text_table(IMPORT_HEADER, import_rows(raw)))
    if "ab" in raw:
        parts.append("== in-process A/B\n" + text_table(AB_HEADER, ab_rows(raw)))
    if "workers" in raw:
        parts.append("== workers\n" + text_table(WORKERS_HEADER, workers_rows(raw)))
    rows = [[v.target, v.measured, v.mark, v.cpu] for v in verdicts(raw) if v.met is not None]
    parts.append("== acceptance (issues 6, 15, 18)\n" + text_table(["target", "measured", "met", "by CPU time"], rows))
    return "\n\n".join(parts)


def results_markdown(
    raw: Raw, meta: dict[str, Any], workload_notes: dict[str, str], analysis: str = "", gpu: str = ""
) -> str:
    """The whole of `benchmarks/RESULTS.md`; `analysis` is the hand-written why of missed targets.

    `gpu` is the GPU section (`benchmarks/gpu_results.md`, the report of `benchmarks/gpu.py` run on a GPU
    machine), kept as it is: this CPU run does not measure it.
    """
    machine = "\n".join(f"- {key}: {value}" for key, value in meta["machine"].items())
    verdict_rows = [[v.target, v.measured, v.mark, v.cpu] for v in verdicts(raw)]
    sections = [
        "# Benchmark results",
        "Written by `make bench` (`benchmarks/run.py`); do not edit by hand, re-run instead. "
        "How the numbers are taken, and what they mean, is in `docs/performance.md`.",
        f"Taken {meta['started']} to {meta['finished']} with `{meta['command']}`: {meta['repeats']} repeats "
        f"per contender (interleaved, one process each; {meta.get('multiprocess_repeats', meta['repeats'])} "
        f"for the two-process workloads, one torchrun job each), {meta['import_runs']} runs per import. "
        f"Load average (1 min) before: {meta['load_before']:.2f}, after: {meta['load_after']:.2f}, "
        f"on {meta['machine']['cores']} cores."
        + (
            f" Each run first waited up to {meta['wait_quiet']:g} s for a quiet machine (`--wait-quiet`)."
            if meta.get("wait_quiet")
            else ""
        ),
        meta.get("note", ""),
        "## Machine\n\n" + machine,
        "## Acceptance targets (issues 6, 15 and 18)\n\n"
        + markdown_table(["target", "measured (wall-clock medians)", "met", "by CPU time"], verdict_rows),
    ]
    if analysis:
        sections.append("## Why (hand-written: `benchmarks/analysis.md`)\n\n" + analysis.strip())
    for workload in TRAINING_WORKLOADS:
        if workload in raw:
            sections.append(
                f"## {workload}\n\n{workload_notes[workload]} {load_line(raw, workload)}\n\n"
                + markdown_table(TRAINING_HEADER, training_rows(raw, workload))
            )
    if "checkpoint" in raw:
        sections.append(
            "## checkpoint\n\n"
            + f"{workload_notes['checkpoint']} {load_line(raw, 'checkpoint')}"
            + "\n\n"
            + markdown_table(CHECKPOINT_HEADER, checkpoint_rows(raw))
        )
    if "import" in raw:
        sections.append(
            "## import\n\nWhole-process wall time of `python -c 'import X'`, interpreter start included. "
            + load_line(raw, "import")
            + "\n\n"
            + markdown_table(IMPORT_HEADER, import_rows(raw))
        )
    sections.extend(in_process_sections(raw))
    sections.append("## Columns\n\n" + COLUMNS)
    sections.append(gpu.strip())
    return "\n\n".join(section for section in sections if section) + "\n"


def in_process_sections(raw: Raw) -> list[str]:
    """The sections of the measurements taken inside one process: the A/B and the workers comparison."""
    sections = []
    if "ab" in raw:
        sections.append(
            "## In-process A/B (tiny and cnn)\n\nThe hand-written loop and `Learner.fit(verbose=0)` in one process, "
            "each warmed up by one untimed fit, then run in turns (the order alternating by round), so both see "
            "the same machine at the same moments; `benchmarks/inprocess.py ab`.\n\n"
            + markdown_table(AB_HEADER, ab_rows(raw))
        )
    if "workers" in raw:
        sections.append(
            "## workers\n\n`fit` + `evaluate` + `predict` (one epoch, batch 64, an MLP 64-256-10) of an in-memory "
            "map-style Dataset (one `__getitem__` per sample) with fitorch's default, no worker processes, against "
            "`Learner(num_workers=2)`; medians of 3 interleaved runs in one process; `benchmarks/inprocess.py "
            "workers`.\n\n" + markdown_table(WORKERS_HEADER, workers_rows(raw))
        )
    return sections


COLUMNS = """\
- *fit s*: wall-clock seconds of the training call alone, measured inside the child process: from
  the contender's first own line (building loaders, optimizer, accelerator, trainer or learner) to
  the last epoch's values in hand. Interpreter start, imports, data generation and a shared
  plain-torch warm-up (20 training and 20 evaluation steps on a throwaway model) come before it.
- *ratio*: median over the reference loop's median. *µs/step over loop*: the difference of the
  medians divided by the number of optimizer steps (validation batches included in the time).
- *CPU s*: process CPU time of the same region; less sensitive than wall time to other load on
  the machine, since every contender runs torch on one thread.
- *process s*: whole-process wall time as the parent saw it (start, imports, warm-up, fit, exit).
- *peak RSS*: `ru_maxrss` of the child at the end (imports included: `import torch` alone is about
  500 MiB here); *RSS growth in fit*: peak at the end minus peak before the fit started."""
