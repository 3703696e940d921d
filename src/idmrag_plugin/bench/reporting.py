"""Write benchmark results: JSON, a Markdown table, the privacy-utility plot, a picture grid."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from idmrag_plugin.bench.runner import BenchResults
from idmrag_plugin.errors import ConfigError

logger = logging.getLogger(__name__)


def _pct(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * float(value):.1f}%"


def _num(value: object, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):.{digits}f}"


def markdown_table(summary: dict) -> str:
    """Two tables (privacy; utility, realism and cost) with one row per method."""
    oracles = list(summary["thresholds"])
    methods = summary["methods"]
    data = summary["dataset"]
    chance = summary["chance"]
    lines = [
        f"{data['probes']} probe faces of {data['identities']} identities, gallery of {data['gallery_photos']} other "
        f"photos; thresholds at {summary['config']['privacy_level']} "
        + ", ".join(f"{k} {v:.4f}" for k, v in summary["thresholds"].items())
        + f"; chance top-1 {_pct(chance['top1'])}, top-5 {_pct(chance['top5'])}.",
        "",
        "| method | " + " | ".join(f"verified as original ({o})" for o in oracles) + " | "
        + " | ".join(f"top-1 / top-5 re-id ({o})" for o in oracles) + " | "
        + " | ".join(f"same person / distinct people ({o})" for o in oracles) + " |",
        "|---" * (1 + 3 * len(oracles)) + "|",
    ]
    for name, m in methods.items():
        p, c = m["privacy"], m["consistency"]
        lines.append(
            f"| {name} | " + " | ".join(_pct(p[o]["verified_as_original"]) for o in oracles) + " | "
            + " | ".join(f"{_pct(p[o]['top1'])} / {_pct(p[o]['top5'])}" for o in oracles) + " | "
            + " | ".join(
                f"{_pct(c[o]['same_person'])} / {_pct(c[o]['distinct_people'])}" if o in c else "–" for o in oracles
            ) + " |"
        )
    lines += [
        "",
        "| method | still a face | landmark error (IOD) | age error (years) | gender agreement | "
        + " | ".join(f"Fréchet ({o})" for o in oracles)
        + " | ms / image median (p95) | CPU ms / image (all threads) | ms / face | fail-closed |",
        "|---" * (9 + len(oracles)) + "|",
    ]
    for name, m in methods.items():
        u, cost, faces = m["utility"], m["cost"], m["faces"]
        fail = faces["fail_closed_rate"]
        lines.append(
            f"| {name} | {_pct(u['still_a_face'])} | {_num(u['landmark_error_iod'], 3)} | "
            f"{_num(u['age_error_years'], 1)} | {_pct(u['gender_agreement'])} | "
            + " | ".join(_num(m["realism"]["frechet"][o], 3) for o in oracles)
            + f" | {_num(cost['wall_ms_per_image']['median'], 0)} ({_num(cost['wall_ms_per_image']['p95'], 0)})"
            f" | {_num(cost['cpu_ms_per_image']['median'], 0)} | {_num(cost['wall_ms_per_face'], 0)}"
            f" | {_pct(fail) if fail is not None else '–'} |"
        )
    split = [
        f"{name} {_pct(m['faces']['fail_closed_in_frame'])} / {_pct(m['faces']['fail_closed_cut_by_frame'])}"
        f" ({m['faces']['cut_by_frame']} of {m['faces']['reported']} faces cut)"
        for name, m in methods.items()
        if m["faces"].get("fail_closed_in_frame") is not None
    ]
    if split:
        lines += ["", "Fail-closed among faces whole in the frame / cut by it: " + "; ".join(split) + "."]
    env = summary["environment"]
    machine = env["machine"]
    lines += [
        "",
        f"Machine: {machine['platform']}, {machine['cpus']} CPUs, device {machine['device']}; {env['date']}. "
        + f"Command: `{env['command']}`",
    ]
    return "\n".join(lines) + "\n"


def privacy_utility_plot(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    oracles = list(summary["thresholds"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for name, m in summary["methods"].items():
        reid = float(np.mean([m["privacy"][o]["top1"] for o in oracles]))
        u = m["utility"]
        axes[0].scatter(reid, u["landmark_error_iod"], s=40)
        axes[0].annotate(name, (reid, u["landmark_error_iod"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        gender = u["gender_agreement"]
        if gender is not None and not math.isnan(gender):
            axes[1].scatter(reid, gender, s=40)
            axes[1].annotate(name, (reid, gender), textcoords="offset points", xytext=(4, 4), fontsize=8)
    chance = summary["chance"]["top1"]
    for ax in axes:
        ax.axvline(chance, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("top-1 re-identification, mean over oracles (lower = more private)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("landmark error / inter-ocular distance (lower = better)")
    axes[1].set_ylabel("gender agreement with original (higher = better)")
    fig.suptitle(f"privacy vs utility on {summary['dataset']['probes']} faces (dotted: chance)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def picture_grid(grids: dict[str, list[np.ndarray]], path: Path) -> Path | None:
    """Columns: methods (the first one the input); rows: the sample faces."""
    from PIL import Image, ImageDraw

    columns = [(name, crops) for name, crops in grids.items() if crops]
    if not columns:
        return None
    size = columns[0][1][0].shape[0]
    label = 16
    rows = max(len(c) for _, c in columns)
    canvas = Image.new("RGB", (len(columns) * size, label + rows * size), "white")
    draw = ImageDraw.Draw(canvas)
    for c, (name, crops) in enumerate(columns):
        draw.text((c * size + 3, 2), name, fill="black")
        for r, crop in enumerate(crops):
            canvas.paste(Image.fromarray(crop), (c * size, label + r * size))
    canvas.save(path)
    return path


def _json_ready(value: object) -> object:
    """NaN (a metric with no data) becomes null: strict JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_results(results: BenchResults, output: Path, stem: str = "bench") -> dict[str, Path]:
    """Write ``{stem}.json``, ``{stem}.md``, ``{stem}_privacy_utility.png`` and ``{stem}_grid.png``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    paths = {"json": output / f"{stem}.json", "markdown": output / f"{stem}.md"}
    paths["json"].write_text(json.dumps(_json_ready(results.summary), indent=2, default=str) + "\n")
    paths["markdown"].write_text(markdown_table(results.summary))
    try:
        paths["plot"] = privacy_utility_plot(results.summary, output / f"{stem}_privacy_utility.png")
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'idmrag-plugin[bench]'): no plot written")
    grid = picture_grid(results.grids, output / f"{stem}_grid.png")
    if grid is not None:
        paths["grid"] = grid
    return paths


README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


def update_readme(readme: Path, paths: dict[str, Path]) -> None:
    """Replace the block between the bench markers of ``readme`` with the new table and pictures
    (links relative to the README). The markers must already be there: nothing else is touched."""
    import os

    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ConfigError(f"{readme} has no {README_START} ... {README_END} block to update")
    rel = {k: Path(os.path.relpath(v, readme.parent)).as_posix() for k, v in paths.items()}
    block = [README_START, "", paths["markdown"].read_text().rstrip(), ""]
    if "plot" in rel:
        block += [f"![privacy against utility]({rel['plot']})", ""]
    if "grid" in rel:
        block += [f"![each method on scikit-image's astronaut and cameraman]({rel['grid']})", ""]
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(head + "\n".join(block) + README_END + tail)
