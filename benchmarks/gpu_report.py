"""The report of `benchmarks/gpu.py`: the goals of issue 17 checked against the figures, and one table per section.

Nothing here measures: it reads the results dictionary and writes Markdown. A section that failed
or did not run says so; a dry run says on every line that its figures are not GPU measurements.
"""

from __future__ import annotations

from typing import Any

SPEED_GOAL = 0.98  # Learner.fit throughput over the hand-written Accelerate loop's
MEMORY_GOAL = 1.02  # Learner.fit peak memory over the hand-written Accelerate loop's


def _verdict(met: bool | None, dry_run: bool) -> str:
    if met is None:
        return "not measured"
    word = "met" if met else "MISSED"
    return f"{word} (dry run, CPU)" if dry_run else word


def _ok(section: dict[str, Any] | None) -> bool:
    return bool(section) and section.get("status") in ("measured", "dry run")


def _precision_goals(section: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    rows = []
    for run in section["runs"]:
        calls = run["autocast_in_every_call"]
        failing = [label for label, ok in calls.items() if not ok]
        measured = "all calls" if not failing else f"lost in: {', '.join(failing)}"
        rows.append(
            (
                f"{run['precision']} autocast in fit, second fit, evaluate, predict ({run['workload']})",
                measured,
                not failing and len(calls) == 4,
            )
        )
    skip = section["skipped_step"]
    if skip["precision"] == "fp16":
        held = not skip["global_step_moved_on_a_skipped_step"] and not skip["step_schedule_moved_on_a_skipped_step"]
        counted = skip["global_step"] == skip["batches"] - len(skip["skipped_batches"])
        measured = f"skipped {skip['skipped_batches']}, global_step {skip['global_step']} of {skip['batches']} batches"
        rows.append(
            (
                "fp16 skipped step leaves global_step and a step schedule",
                measured,
                held and counted and skip["inf_injected_at_batch"] in skip["skipped_batches"],
            )
        )
    else:
        rows.append(("fp16 skipped step leaves global_step and a step schedule", "needs fp16 (CUDA)", None))
    clip = section["clipping"]
    ratios = (clip["median_seen_over_unscaled"], clip["median_clipped_over_clip"])
    unscaled = all(abs(ratio - 1) < 0.01 for ratio in ratios)
    rows.append(
        (
            f"{clip['precision']}: callbacks and clipping see unscaled gradients",
            f"seen/unscaled {ratios[0]:.4f}, clipped/clip {ratios[1]:.4f}",
            unscaled if clip["precision"] == "fp16" else None,
        )
    )
    return rows


def _speed_goals(speed: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    rows = []
    for workload in speed["workloads"]:
        medians = workload["median_samples_per_s"]
        ratio = medians["fitorch"] / medians["accelerate"]
        rows.append(
            (
                f"{workload['workload']}: Learner.fit >= {SPEED_GOAL}x the Accelerate loop's samples/s",
                f"{ratio:.3f}x ({medians['fitorch']:.0f} vs {medians['accelerate']:.0f}; "
                f"PyTorch loop {medians['torch']:.0f})",
                ratio >= SPEED_GOAL,
            )
        )
        peaks = workload["median_peak_bytes"]
        if peaks["fitorch"] and peaks["accelerate"]:
            peak_ratio = peaks["fitorch"] / peaks["accelerate"]
            rows.append(
                (
                    f"{workload['workload']}: peak memory <= {MEMORY_GOAL}x the Accelerate loop's",
                    f"{peak_ratio:.3f}x ({_mib(peaks['fitorch'])} vs {_mib(peaks['accelerate'])}; "
                    f"PyTorch loop {_mib(peaks['torch'])})",
                    peak_ratio <= MEMORY_GOAL,
                )
            )
    return rows


def _sync_goals(syncs: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    rows = []
    for run in syncs["runs"]:
        if run["syncs"] is None:
            rows.append((f"{run['run']}: host syncs", "needs CUDA", None))
        elif "redraws" in run:
            rows.append(
                (
                    f"{run['run']}: at most one sync per redraw",
                    f"{run['syncs']} syncs, {run['redraws']} redraws",
                    run["syncs"] <= run["redraws"],
                )
            )
        elif run["run"].startswith("Learner.fit(verbose=0)") and "fp16" not in run["run"]:
            rows.append(
                (
                    f"{run['run']}, {run['workload']}: no sync per step",
                    f"{run['syncs_per_step']:.2f} per step",
                    run["syncs"] == 0,
                )
            )
    return rows


def _other_goals(sections: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    rows = []
    data, memory, resume, launch = (sections.get(k) for k in ("data", "memory", "resume", "launch"))
    if _ok(data):
        pinned = next(iter(data["syncs"].values()))
        per_step = pinned["syncs_per_step"]
        rows.append(
            (
                "data: fitorch's own loader on CUDA, no sync per step",
                "needs CUDA" if per_step is None else f"{per_step:.2f} per step",
                None if per_step is None else per_step == 0,
            )
        )
    if _ok(memory):
        for run in memory["runs"]:
            growth = run["growth_bytes"]
            rows.append(
                (
                    f"memory: no growth across epochs (verbose={run['verbose']})",
                    "needs CUDA" if growth is None else f"{growth} bytes",
                    None if growth is None else growth <= 0,
                )
            )
    if _ok(resume):
        for run in resume["runs"]:
            rows.append(
                (
                    f"exact resume, {run['precision']}, deterministic ({run['device']})",
                    "bit-identical" if run["bit_identical"] else f"{len(run['different_tensors'])} tensors differ",
                    run["bit_identical"],
                )
            )
    if _ok(launch):
        ok = launch["returncode"] == 0 and launch["config_says_bf16"] and launch["config_says_cuda"]
        rows.append(("accelerate launch --mixed_precision bf16 reaches fitorch", f"exit {launch['returncode']}", ok))
    return rows


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The goals of issue 17, each with the measured value and whether it was met."""
    sections, dry_run = results["sections"], results["meta"]["dry_run"]
    rows: list[tuple[str, str, bool | None]] = []
    if _ok(sections.get("precision")):
        rows += _precision_goals(sections["precision"])
    if _ok(sections.get("speed")):
        rows += _speed_goals(sections["speed"])
    if _ok(sections.get("syncs")):
        rows += _sync_goals(sections["syncs"])
    rows += _other_goals(sections)
    for name, section in sections.items():
        if section.get("status") == "failed":
            rows.append((f"section {name}", section["error"].splitlines()[0][:200], False))
    return [{"goal": goal, "measured": measured, "verdict": _verdict(met, dry_run)} for goal, measured, met in rows]


# ---------------------------------------------------------------------------- Markdown


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f} MiB"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _precision_md(section: dict[str, Any]) -> list[str]:
    rows = []
    for run in section["runs"]:
        for label, counts in run["forwards"].items():
            rows.append([run["workload"], run["precision"], label, ", ".join(f"{k}: {v}" for k, v in counts.items())])
    lines = _table(["workload", "precision", "call", "forwards of the probed layer"], rows)
    fits = []
    for run in section["runs"]:
        first, losses = run["first_fit"], run["losses"]
        scale = "-" if first["scale"] is None else f"{first['scale']:g}"
        fits.append([run["workload"], run["precision"], first["batches"], first["global_step"], first["skipped"],
                     scale, ", ".join(f"{k} {v:.4g}" for k, v in losses.items()), run["predict_dtype"]])  # fmt: skip
    header = ["workload", "precision", "batches", "global_step", "skipped", "scale", "losses", "predict dtype"]
    lines += _table(header, fits)
    skip = section["skipped_step"]
    lines.append(
        f"Skipped step ({skip['precision']}, inf written into a gradient at batch "
        f"{skip['inf_injected_at_batch']}): skipped batches {skip['skipped_batches']}, global_step "
        f"{skip['global_step']} after {skip['batches']} batches, on_optimizer_step fired "
        f"{skip['on_optimizer_step_fired']} times."
    )
    clip = section["clipping"]
    lines.append(
        f"Gradients ({clip['precision']}): norm seen by on_before_optimizer_step / (scaled norm / scale) = "
        f"{clip['median_seen_over_unscaled']:.4f} (median); with grad_clip={clip['clip']}, clipped norm / "
        f"clip = {clip['median_clipped_over_clip']:.4f} (smallest unscaled norm "
        f"{clip['smallest_unscaled_norm']:.3g})."
    )
    return lines + [f"Note: {note}" for note in section["notes"]] + [""]


def _speed_md(section: dict[str, Any]) -> list[str]:
    lines = []
    for workload in section["workloads"]:
        lines.append(
            f"**{workload['workload']}**: {workload['description']}; {section['repeats']} interleaved repeats."
        )
        lines.append("")
        reference = workload["median_samples_per_s"]["accelerate"]
        rows = []
        for name, runs in workload["runs"].items():
            values = [run["samples_per_s"] for run in runs]
            median = workload["median_samples_per_s"][name]
            rows.append(
                [
                    name,
                    f"{median:,.0f}",
                    f"{min(values):,.0f}–{max(values):,.0f}",
                    f"{median / reference:.3f}",
                    _mib(workload["median_peak_bytes"][name]),
                ]
            )
        lines += _table(["contender", "samples/s (median)", "min–max", "vs Accelerate loop", "peak allocated"], rows)
    return lines


def _syncs_md(section: dict[str, Any]) -> list[str]:
    rows = []
    for run in section["runs"]:
        where = "; ".join(f"{place} x{count}" for place, count in run["where"].items()) or "-"
        per_step = "-" if run["syncs_per_step"] is None else f"{run['syncs_per_step']:.2f}"
        extra = f" ({run['redraws']} redraws)" if "redraws" in run else ""
        rows.append([run["run"], run["workload"], run["steps"], f"{run['syncs']}{extra}", per_step, where])
    lines = _table(["run", "workload", "steps in window", "syncs", "per step", "where (file:line x count)"], rows)
    return lines + [f"Note: {note}" for note in section["notes"]] + [""]


def _data_md(section: dict[str, Any]) -> list[str]:
    lines = [f"{section['workload']}.", ""]
    rows = []
    for mode, runs in section["runs"].items():
        syncs = section["syncs"][mode]["syncs_per_step"]
        rows.append(
            [
                mode,
                f"{section['median_samples_per_s'][mode]:,.0f}",
                "-" if syncs is None else f"{syncs:.2f}",
                runs[0]["non_blocking"],
            ]
        )
    lines += _table(["data path", "samples/s (median)", "syncs per step", "non_blocking"], rows)
    return lines + [f"Note: {note}" for note in section["notes"]] + [""]


def _memory_md(section: dict[str, Any]) -> list[str]:
    rows = [
        [run["verbose"], ", ".join(_mib(b) for b in run["allocated_at_epoch_ends"]), run["growth_bytes"]]
        for run in section["runs"]
    ]
    return [f"{section['workload']}.", ""] + _table(["verbose", "allocated at each epoch end", "growth (bytes)"], rows)


def _checkpoint_md(section: dict[str, Any]) -> list[str]:
    reference = section["median"]["torch_fsync"]
    rows = []
    for name, medians in section["median"].items():
        rows.append(
            [
                name,
                f"{medians['save_s']:.3f}",
                f"{medians['save_s'] / reference['save_s']:.2f}",
                f"{medians['load_s']:.3f}",
                f"{medians['load_s'] / reference['load_s']:.2f}",
                f"{section['size_mb'][name]:.1f}",
            ]
        )
    header = ["contender", "save s (median)", "save ratio", "load s (median)", "load ratio", "MiB"]
    intro = f"{section['model']} + AdamW state on {section['state_on']}; torch_fsync = torch.save + fsync + rename."
    return [intro, ""] + _table(header, rows)


def _resume_md(section: dict[str, Any]) -> list[str]:
    rows = [
        [
            r["precision"],
            r["device"],
            r["saved_at_step"],
            r["steps"],
            r["bit_identical"],
            r["largest_difference"],
            r["same_history"],
        ]
        for r in section["runs"]
    ]
    header = ["precision", "device", "saved at step", "steps", "bit-identical", "largest difference", "same history"]
    return _table(header, rows)


def _launch_md(section: dict[str, Any]) -> list[str]:
    if "command" not in section:
        return [section.get("note", ""), ""]
    return [
        f"`{section['command']}`: exit {section['returncode']}; train.log config says bf16: "
        f"{section['config_says_bf16']}, cuda: {section['config_says_cuda']}.",
        "",
        "```",
        section["stdout"].strip(),
        section["stderr_tail"].strip(),
        "```",
        "",
    ]


RENDERERS = {
    "precision": _precision_md,
    "speed": _speed_md,
    "syncs": _syncs_md,
    "data": _data_md,
    "memory": _memory_md,
    "checkpoint": _checkpoint_md,
    "resume": _resume_md,
    "launch": _launch_md,
}


def markdown(results: dict[str, Any]) -> str:
    """The whole report: what ran where, the goals, then each section."""
    meta = results["meta"]
    lines = ["## GPU", ""]
    if meta["dry_run"]:
        lines += ["**DRY RUN on the CPU at tiny sizes: no figure below is a GPU measurement.**", ""]
    versions = ", ".join(f"{k} {meta[k]}" for k in ("torch", "accelerate", "torchvision", "fitorch") if meta.get(k))
    lines += [
        f"Device: {meta['device']} (CUDA {meta['cuda']}, cuDNN {meta['cudnn']}); {versions}; Python "
        f"{meta['python']}. Taken {meta['started']} in {meta['seconds']} s by `python benchmarks/gpu.py`.",
        "",
    ]
    lines += _table(
        ["goal (issue 17)", "measured", "verdict"],
        [[r["goal"], r["measured"], r["verdict"]] for r in results["summary"]],
    )
    for name, section in results["sections"].items():
        lines += [f"### {name} ({section['status']}, {section['seconds']} s)", ""]
        if section["status"] == "failed":
            lines += ["```", section.get("traceback", section["error"]).strip()[-3000:], "```", ""]
        elif section["status"] != "skipped" or name == "launch":
            lines += RENDERERS[name](section)
    return "\n".join(lines)
