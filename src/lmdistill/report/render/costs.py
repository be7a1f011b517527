"""What each model costs: size, speed and memory, energy and CO2; and the machine it was measured on.

Speed-ups and compression are given against the teacher as trained (what distillation and the runtime
bought together) and, when models are served in more than one runtime, against the teacher served in
the same runtime (what the smaller model alone bought).
"""

from __future__ import annotations

from lmdistill.report.render.blocks import (
    Block,
    Callout,
    Code,
    Section,
    Table,
    count,
    divide,
    duration,
    finite,
    get,
    na,
    ratio,
    si,
    sig,
    size,
)
from lmdistill.report.render.context import UNSTABLE_SPREAD, Context, latency, speedup
from lmdistill.report.render.quality import table_rows

# --------------------------------------------------------------------------------------------- references


def references(ctx: Context) -> list[tuple[str, str]]:
    """(header suffix, kind) of the teacher columns: kind "trained" always, "runtime" when several."""
    if not ctx.several_runtimes():
        return [("", "trained")]
    return [(" as trained", "trained"), (" in the same runtime", "runtime")]


def reference(ctx: Context, key: str, kind: str) -> tuple[str | None, str]:
    """(teacher key, reason when there is none or a figure is missing) for a column kind."""
    if kind == "runtime":
        ref = ctx.same_runtime_teacher(key)
        return ref, "not measured" if ref else f"no teacher in {ctx.runtime(key)}"
    return ctx.teacher, "not measured" if ctx.teacher else "no teacher"


def times_smaller(ctx: Context, key: str, kind: str, *keys: str) -> str:
    """How many times smaller than the teacher by one measure ('3.8×')."""
    ref, reason = reference(ctx, key, kind)
    return ratio(divide(get(ctx.entry(ref), *keys), get(ctx.entry(key), *keys)), reason)


# --------------------------------------------------------------------------------------------- size


def size_section(ctx: Context) -> Section:
    refs = references(ctx)
    header = ["Model", "Parameters", "Without embeddings", "Weights on disk", "Folder on disk"]
    header += [f"Compression vs teacher{suffix} (parameters)" for suffix, kind in refs if kind == "trained"]
    header += [f"Compression vs teacher{suffix} (disk)" for suffix, _ in refs]

    def cells(key: str) -> list[str]:
        entry = ctx.entry(key)
        row = [
            count(get(entry, "parameters", "total")),
            count(get(entry, "parameters", "without_embeddings")),
            size(get(entry, "size", "weights_bytes")),
            size(get(entry, "size", "total_bytes")),
            times_smaller(ctx, key, "trained", "parameters", "total"),
        ]
        return row + [times_smaller(ctx, key, kind, "size", "weights_bytes") for _, kind in refs]

    note = "Embeddings: all nn.Embedding parameters (word, position, token type), tied weights counted once."
    return Section("Size", [Table(header, table_rows(ctx, cells, len(header) - 1)), note])


# --------------------------------------------------------------------------------------------- speed


def devices_and_batches(ctx: Context) -> dict[str, list[int]]:
    found: dict[str, set[int]] = {}
    for entry in ctx.models.values():
        for item in entry.get("latency") or []:
            if item.get("device") and finite(item.get("batch_size")):
                found.setdefault(item["device"], set()).add(int(item["batch_size"]))
    return {d: sorted(b) for d, b in sorted(found.items(), key=lambda kv: kv[0] != "cpu")}


def speed_cells(ctx: Context, key: str, device: str, batch: int) -> list[str]:
    """Median latency with p10 – p90 (batch 1) or throughput, then the speed-up per teacher column."""
    item = latency(ctx.entry(key), device, batch)
    ups = []
    for _, kind in references(ctx):
        ref, reason = reference(ctx, key, kind)
        ups.append(ratio(speedup(ctx, key, ref, device, batch), reason))
    if batch == 1:
        median, p10, p90 = (get(item, k) for k in ("median_s", "p10_s", "p90_s"))
        spread = f" ({si(p10, 's')} – {si(p90, 's')})" if finite(p10) and finite(p90) else ""
        return [si(median, "s") + (spread if finite(median) else ""), *ups]
    rate = get(item, "examples_per_s")
    return [f"{sig(rate)} ex/s" if finite(rate) else na("not measured"), *ups]


def memory_cells(entry: dict | None, device: str) -> list[str]:
    """[peak, 'weights + inference'] from inference_peak_memory; [increase, n/a] from a bare peak_memory."""
    item = next((m for m in get(entry, "memory") or [] if m.get("device") == device), None)
    if item is None or not item.get("measured", True):
        return [na(get(item, "reason") or "not measured"), "n/a"]
    increase = size(item.get("increase_bytes"))
    if finite(item.get("peak_bytes")) and finite(item.get("weights_bytes")):
        return [size(item["peak_bytes"]), f"{size(item['weights_bytes'])} + {increase}"]
    return [f"+{increase}", na("weights not given")]


def memory_header(ctx: Context, device: str) -> str:
    batches = sorted(
        {
            m.get("batch_size")
            for e in ctx.models.values()
            for m in e.get("memory") or []
            if m.get("device") == device and finite(m.get("batch_size"))
        }
    )
    return f"Peak memory{', batch ' + ', '.join(map(str, batches)) if batches else ''}"


def speed_table(ctx: Context, device: str, batches: list[int]) -> Table:
    header = ["Model"]
    for batch in batches:
        kind = "Latency (median, p10 – p90)" if batch == 1 else "Throughput"
        header.append(f"{kind}, batch {batch}")
        header += [f"Speed-up vs teacher{suffix}, batch {batch}" for suffix, _ in references(ctx)]
    header += [memory_header(ctx, device), "Memory: weights + inference"]

    def cells(key: str) -> list[str]:
        speed = [c for b in batches for c in speed_cells(ctx, key, device, b)]
        return speed + memory_cells(ctx.entry(key), device)

    return Table(header, table_rows(ctx, cells, len(header) - 1))


def timing_notes(ctx: Context, items: list[dict]) -> list[Block]:
    """How the timings were taken: interleaved or one model after the other; the teacher columns."""
    blocks: list[Block] = []
    interleaved = [i.get("timing") == "interleaved" for i in items]
    turns = {i.get("calls_per_turn", 1) for i in items}
    if all(interleaved) and turns == {1}:
        blocks.append(
            "The models were timed interleaved (round-robin, one call each per round, in one process), "
            "so drift of the machine (CPU frequency, caches, other load) hits every model alike."
        )
    elif all(interleaved) and len(turns) == 1:
        blocks.append(
            f"The models were timed interleaved (round-robin in turns of {turns.pop()} consecutive calls of one "
            "model, the first untimed, in one process), so drift of the machine (CPU frequency, caches, other "
            "load) hits every model alike, and each timed call finds the caches as a served model answering "
            "consecutive requests does."
        )
    elif any(interleaved):
        text = (
            "Some models were timed one after the other, not interleaved: drift of the machine between "
            "their runs can bias the speed-ups."
        )
        blocks.append(Callout(text, "caveat"))
    if ctx.several_runtimes():
        blocks.append(
            f"Speed-up 'as trained' compares with the teacher as trained ({ctx.label(ctx.teacher)}, "
            f"{ctx.runtime(ctx.teacher)}): distillation and the runtime together; 'in the same runtime' "
            "compares with the teacher served by the same runtime: what the smaller model alone bought."
        )
    return blocks


def speed_notes(ctx: Context, device: str) -> list[Block]:
    items = [i for e in ctx.models.values() for i in e.get("latency") or [] if i.get("device") == device]
    names = sorted({str(i.get("device_name")) for i in items})
    threads = sorted({i.get("threads") for i in items if finite(i.get("threads"))})
    runs = sorted({(i.get("batch_size"), i.get("n"), i.get("warmup")) for i in items}, key=str)
    how = "; ".join(f"Batch {b}: {n} timed runs after {w} warm-up runs" for b, n, w in runs)
    lengths = ", ".join(sorted({str(i.get("max_length")) for i in items}))
    blocks: list[Block] = [
        f"{device.upper()}: {', '.join(names)}, {'/'.join(map(str, threads))} torch threads. {how}. "
        f"Inputs truncated to {lengths} tokens and padded to the longest of each batch; speed-ups are "
        "the teacher's median latency over the model's (batch 1) and the model's throughput over the "
        "teacher's (larger batches)."
    ]
    blocks += timing_notes(ctx, items) + unstable_timings(ctx, device)
    if len(threads) > 1:
        blocks.append(
            Callout(
                "The models were timed with different thread counts: speed-ups mix hardware settings.",
                "caveat",
            )
        )
    methods = {
        m.get("method")
        for e in ctx.models.values()
        for m in e.get("memory") or []
        if m.get("device") == device and m.get("method")
    }
    blocks += [f"Peak memory: {m}." for m in sorted(methods)]
    return blocks


def unstable_timings(ctx: Context, device: str) -> list[Block]:
    """A caveat when p90 is more than UNSTABLE_SPREAD times p10: a busy or throttling machine."""
    noisy = []
    for key in ctx.keys:
        for item in get(ctx.entry(key), "latency") or []:
            spread = divide(item.get("p90_s"), item.get("p10_s"))
            if item.get("device") == device and spread is not None and spread > UNSTABLE_SPREAD:
                noisy.append(f"{ctx.label(key)} at batch {item.get('batch_size')} ({spread:.1f}×)")
    if not noisy:
        return []
    text = (
        f"Timings vary widely (p90 over p10): {', '.join(noisy)}. The machine was probably busy or "
        "throttling; treat these latencies and speed-ups with caution and rerun on an idle machine."
    )
    return [Callout(text, "caveat")]


def speed_section(ctx: Context) -> Section:
    section = Section("Speed and memory")
    grouped = devices_and_batches(ctx)
    if not grouped:
        section.blocks.append(na("no latency measured"))
    for device, batches in grouped.items():
        section.blocks += [speed_table(ctx, device, batches), *speed_notes(ctx, device)]
    return section


# --------------------------------------------------------------------------------------------- energy


def energy_cells(result: dict | None, per_thousand: bool) -> list[str]:
    """Energy, CO2 and power source of a measure_energy/track_energy result (per 1,000 predictions or
    in total)."""
    if not result or not result.get("measured"):
        return [na(get(result, "reason") or "not measured"), "n/a", "n/a"]
    suffix = "_per_1000" if per_thousand else ""
    energy, co2 = result.get(f"energy_kwh{suffix}"), result.get(f"emissions_kg_co2{suffix}")
    missing = "no prediction count" if per_thousand else "not measured"
    source = "estimated" if result.get("estimated", True) else "measured (power sensor)"
    return [
        si(energy * 1000 if finite(energy) else None, "Wh", missing),
        si(co2 * 1000 if finite(co2) else None, "g CO2e", result.get("emissions_reason") or missing),
        source,
    ]


def measured_over(result: dict | None) -> str:
    """'6,144 predictions in 1.20 s': how much inference an energy figure rests on."""
    if not result or not result.get("measured"):
        return "n/a"
    predictions = result.get("predictions")
    amount = f"{predictions:,} predictions" if finite(predictions) else "n/a predictions"
    return f"{amount} in {duration(result.get('duration_s'))}"


def training_cells(training: dict | None) -> list[str]:
    """Wall time, energy, CO2 and power source of a recorded training run."""
    if not training:
        return [na("no training run recorded"), "n/a", "n/a", "n/a"]
    wall = training.get("wall_time_s", get(training, "energy", "wall_time_s"))
    return [duration(wall), *energy_cells(training.get("energy"), False)]


def energy_section(ctx: Context) -> Section:
    section = Section("Energy and CO2")

    def inference(key: str) -> list[str]:
        result = get(ctx.entry(key), "energy")
        return [*energy_cells(result, True), measured_over(result)]

    section.blocks += [
        "Inference, per 1,000 predictions:",
        Table(["Model", "Energy", "CO2", "Power source", "Measured over"], table_rows(ctx, inference, 4)),
        "Training run (distillation for the student, fine-tuning without KD for the baseline):",
        Table(
            ["Run", "Wall time", "Energy", "CO2", "Power source"],
            table_rows(ctx, lambda key: training_cells(get(ctx.entry(key), "training")), 4),
        ),
    ]
    section.blocks += energy_caveats(ctx)
    return section


def energy_results(ctx: Context) -> list[dict]:
    found = [get(e, "energy") for e in ctx.models.values()] + [
        get(e, "training", "energy") for e in ctx.models.values()
    ]
    return [r for r in found if isinstance(r, dict) and r.get("measured")]


def energy_caveats(ctx: Context) -> list[Block]:
    results = energy_results(ctx)
    if not results:
        return []
    blocks: list[Block] = []
    for method in sorted({r.get("method", "unknown") for r in results if r.get("estimated", True)}):
        blocks.append(Callout(f"Estimated, not measured by a power sensor: {method}.", "caveat"))
    sensed = sorted({r.get("method", "") for r in results if not r.get("estimated", True)})
    blocks += [f"Measured: {m}." for m in sensed]
    countries = sorted({str(r.get("country_iso_code")) for r in results})
    blocks.append(
        f"CO2 from the average carbon intensity of the electricity grid of {', '.join(countries)} "
        "(codecarbon offline data); energy and CO2 figures from codecarbon."
    )
    return blocks


# --------------------------------------------------------------------------------------------- machine


def environment_section(ctx: Context) -> Section:
    env = ctx.data.get("environment")
    if not isinstance(env, dict):
        return Section("Environment", [na("no environment recorded")])
    cores = [
        f"{env.get(k)} {w}"
        for k, w in (
            ("cpu_physical_cores", "physical"),
            ("cpu_logical_cores", "logical"),
            ("cpu_usable_cores", "usable by this process"),
        )
        if env.get(k)
    ]
    rows = [
        ["CPU", f"{env.get('cpu', 'n/a')} ({', '.join(cores) or 'cores n/a'})"],
        ["Torch threads", str(env.get("torch_threads", "n/a"))],
        ["GPU", ", ".join(env.get("gpus") or []) or "none"],
        ["CUDA", str(env.get("cuda") or "n/a")],
        ["RAM", size(env.get("ram_bytes"))],
        ["OS", str(env.get("os", "n/a"))],
        ["Python", str(env.get("python", "n/a"))],
    ]
    rows += [[name, str(version)] for name, version in (env.get("libraries") or {}).items()]
    blocks: list[Block] = [Table(["", ""], rows)]
    if env.get("command"):
        blocks += ["Command:", Code(str(env["command"]))]
    return Section("Environment", blocks)
