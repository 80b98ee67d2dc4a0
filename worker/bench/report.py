"""The bench's outputs: results.json, results.md (methods.md's table style) and the trade-off
plot of Avg. Gap against speed-up that a user picks a method from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen before this import
from matplotlib.ticker import FuncFormatter, NullLocator  # noqa: E402

SCENARIO_TITLES = {"random-10": "10% random forgetting", "class": "Class forgetting"}
TABLE_COLUMNS = (("UA", "ua", 2), ("RA", "ra", 2), ("TA", "ta", 2), ("MIA", "mia", 2),
                 ("MIA (SalUn)", "mia_salun", 2), ("Avg. Gap", "avg_gap", 2),
                 ("Avg. Gap (SalUn)", "avg_gap_salun", 2), ("JS", "js", 4),
                 ("seconds", "seconds", 2), ("speed-up", "speedup", 1))
GATE_COLUMN = "gate"
# The project's goal for the core methods (see the bench issue): the region to land in.
GOAL_GAP, GOAL_SPEEDUP = 2.0, 10.0
GAP_TICKS = (0, 0.5, 1, 1.5, 2, 5, 10, 20, 50, 100)


def write_report(results: dict[str, Any], out: Path, stem: str = "results") -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md",
             "plot": out / f"{stem}-tradeoff.png"}
    paths["json"].write_text(json.dumps(results, indent=2, default=str) + "\n")
    plot_tradeoff(results["rows"], paths["plot"], title=f"preset {results['preset']}")
    if "pairs" not in results:
        paths["markdown"].write_text(markdown(results, paths["plot"].name))
        return paths
    pair_plots = {}
    for pair in results["pairs"]:
        pair_plots[pair["pair"]] = out / f"{stem}-{pair['pair']}-tradeoff.png"
        plot_tradeoff(pair["rows"], pair_plots[pair["pair"]], title=f"pair {pair['pair']}")
    paths["markdown"].write_text(
        suite_markdown(results, paths["plot"].name,
                       {name: path.name for name, path in pair_plots.items()}))
    return paths | {f"plot {name}": path for name, path in pair_plots.items()}


# --- Markdown ------------------------------------------------------------------------------

def markdown(results: dict[str, Any], plot_name: str) -> str:
    kind = f"tuning `{results['tune']['method']}`" if "tune" in results else "benchmark"
    lines = [f"# Lethe {kind}: preset `{results['preset']}`", "", _setup(results), ""]
    lines += [_originals(results["originals"]), ""]
    lines += _scenario_tables(results, level="##")
    lines += [*_gate_section(results["gate"], results["scenarios"], "##"), ""]
    if "tune" in results:
        lines += [*_tuning(results["tune"]), ""]
    lines += [*_legend(len(results["seeds"]), results["dataset"]["test_split"]), "",
              f"![Avg. Gap against speed-up]({plot_name})", ""]
    return "\n".join(lines)


def suite_markdown(results: dict[str, Any], plot_name: str,
                   pair_plots: dict[str, str]) -> str:
    """The rows averaged over the pairs first, then each pair's own report."""
    pairs = results["pairs"]
    names = ", ".join(f"`{pair['pair']}`" for pair in pairs)
    kind = f"tuning `{results['tune']['method']}`" if "tune" in results else "benchmark"
    lines = [f"# Lethe {kind}: preset `{results['preset']}`", "", results["description"], "",
             f"Pairs {names}; seeds {results['seeds']}, device {results['device']}, "
             f"{results['torch_threads']} torch thread(s); {results.get('seconds', 0):.0f} s "
             "in all.", "",
             f"## Overall: mean over {len(pairs)} pairs", "",
             "Each figure is first the pair's own (its mean over seeds; for Avg. Gap (SalUn), "
             "its gap between the means over seeds), then averaged over the pairs where the "
             "row finished; ± is the standard deviation over pairs; gate counts are summed.",
             ""]
    lines += _scenario_tables(results, level="###")
    lines += [*_gate_section(results["gate"], results["scenarios"], "###"), "",
              f"![Avg. Gap against speed-up, mean over pairs]({plot_name})", ""]
    if "tune" in results:
        lines += [*_tuning(results["tune"]), "",
                  *_leave_one_pair_out(results["tune"]["leave_one_pair_out"]), ""]
    for pair in pairs:
        lines += [f"## Pair `{pair['pair']}`", "", _setup(pair), "",
                  _originals(pair["originals"]), "", *_scenario_tables(pair, level="###"),
                  *_gate_section(pair["gate"], pair["scenarios"], "###"), "",
                  f"![Avg. Gap against speed-up, {pair['pair']}]({pair_plots[pair['pair']]})",
                  ""]
    lines += [*_legend(len(results["seeds"]), pairs[0]["dataset"]["test_split"]), ""]
    return "\n".join(lines)


def _scenario_tables(results: dict[str, Any], level: str) -> list[str]:
    lines = []
    for scenario in results["scenarios"]:
        rows = [row for row in results["rows"] if row["scenario"] == scenario]
        lines += [f"{level} {SCENARIO_TITLES.get(scenario, scenario)} (`{scenario}`)", "",
                  *table(rows), ""]
        notes = [*_failures(rows), *_dampening_notes(rows)]
        lines += [*notes, ""] if notes else []
    return lines


def _failures(rows: list[dict[str, Any]]) -> list[str]:
    return [f"- {row['label']}: failed on {'; '.join(row['errors'])}"
            for row in rows if row["errors"]]


def _dampening_notes(rows: list[dict[str, Any]]) -> list[str]:
    """How many weights SSD-like rows dampened, per seed: a row that dampened none left the
    model as it was, whatever its other figures say."""
    notes = []
    for row in rows:
        counts = row.get("weights_dampened")
        if not counts:
            continue
        total = next((t for t in row.get("weights_total", []) if t is not None), None)
        shown = ", ".join("failed" if count is None else f"{count:,}" for count in counts)
        of_total = f" of {total:,}" if total else ""
        none = [seed for seed, count in zip(row["seeds"], counts, strict=True) if count == 0]
        warning = (f"; **dampened nothing on seed(s) {', '.join(map(str, none))}**"
                   if none else "")
        notes.append(f"- {row['label']}: weights dampened per seed {shown}{of_total}{warning}")
    return notes


def _gate_section(gate: dict[str, dict[str, Any]], scenarios: list[str],
                  level: str) -> list[str]:
    """The acceptance gate's pass rate per contender, per scenario and over all trials."""
    header = ["method", *(f"`{scenario}`" for scenario in scenarios), "all"]
    lines = [f"{level} Acceptance gate", "",
             "Share of trials the gate (worker/engine/gate.py, default thresholds) would "
             "publish, judged against the original model on the data the method saw.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, entry in gate.items():
        cells = [_percent(entry["per_scenario"].get(scenario)) for scenario in scenarios]
        lines.append("| " + " | ".join([label, *cells, f"{_percent(entry['pass_rate'])} "
                                        f"({entry['passed']}/{entry['trials']})"]) + " |")
    return lines


def _percent(rate: float | None) -> str:
    return "–" if rate is None else f"{100 * rate:.0f}%"


VALIDATION_SOURCES = {
    "carve": "the validation split carved from the training data",
    "unused": "a validation split of the training rows the preset's subset leaves out",
}


def _tuning(tune: dict[str, Any]) -> list[str]:
    lines = [f"## Chosen values for `{tune['method']}`", "",
             f"Grid `{json.dumps(tune['grid'])}`, scored on "
             f"{VALIDATION_SOURCES[tune.get('validation', 'carve')]}. "
             f"Criterion: {tune['criterion']}.", ""]
    chosen = tune["chosen"]
    if chosen is None:
        return [*lines, "Every setting failed: nothing chosen."]
    shortfall = "" if chosen["met_min_speedup"] else (
        f" No setting reached {tune['min_speedup']:g}x; this is the lowest gap of all.")
    return [*lines, f"**{json.dumps(chosen['params'])}**: Avg. Gap {chosen['avg_gap']:.2f} "
                    f"(mean over scenarios), speed-up at least {chosen['speedup']:.1f}x."
                    + shortfall, *_versus_defaults(tune.get("versus_defaults"))]


def _versus_defaults(comparison: dict[str, Any] | None) -> list[str]:
    if not comparison or not comparison["points"]:
        return []
    lines = ["", f"Against the current defaults (`{comparison['defaults']}`), paired by seed: "
                 "the change in Avg. Gap (mean over scenarios; negative is closer to retrain) "
                 "± its standard error, and the seeds where the setting was better.", "",
             "| setting | gap change | better on |", "|---|---|---|"]
    for label, point in comparison["points"].items():
        error = "" if point["standard_error"] is None else f" ± {point['standard_error']:.2f}"
        lines.append(f"| {label} | {point['gap_change']:+.2f}{error} | "
                     f"{point['better_on']} of {point['seeds']} |")
    return lines


def _leave_one_pair_out(held_out: dict[str, Any]) -> list[str]:
    """Each pair judged by the setting chosen on the other pairs alone."""
    defaults = held_out["defaults"]
    lines = ["## Leave one pair out", "",
             "For each pair, the setting the criterion picks from the other pairs' rows alone, "
             "and its Avg. Gap (Lethe's convention, mean over scenarios) on this pair, beside "
             "this pair's own best" + (f" and the current defaults (`{defaults}`)"
                                       if defaults else "") + ".", "",
             "| held-out pair | chosen on the others | its gap here | best here | best gap "
             "| defaults' gap |", "|---|---|---|---|---|---|"]
    for pair, entry in held_out["pairs"].items():
        lines.append(f"| {pair} | {entry['chosen_elsewhere'] or 'none'} | "
                     f"{_number(entry['gap_here'])} | {entry['best_here'] or 'none'} | "
                     f"{_number(entry['best_gap_here'])} | "
                     f"{_number(entry['defaults_gap_here'])} |")
    lines += ["", f"Mean held-out gap {_number(held_out['mean_held_out_gap'])}; the defaults "
                  f"{_number(held_out['mean_defaults_gap'])}."]
    return lines


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def table(rows: list[dict[str, Any]]) -> list[str]:
    header = ["method", *(title for title, _, _ in TABLE_COLUMNS), GATE_COLUMN]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [_cell(row, key, digits) for _, key, digits in TABLE_COLUMNS]
        gate = f"{row['gate_passed']}/{row['gate_trials']}" if "gate_trials" in row else "–"
        lines.append("| " + " | ".join([row["label"], *cells, gate]) + " |")
    return lines


def _cell(row: dict[str, Any], key: str, digits: int) -> str:
    mean, std = row.get(key), row.get(f"{key}_std")
    if mean is None:
        return "failed" if row.get("avg_gap") is None else "–"  # "–": not measured
    spread_over = row.get("pairs") or row["seeds"]
    if len(spread_over) > 1 and std is not None:
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def _setup(results: dict[str, Any]) -> str:
    data = results["dataset"]
    recipe = ", ".join(f"{key} {value}" for key, value in results["recipe"].items())
    config = {key: value for key, value in results["architecture_config"].items()
              if key not in ("num_classes", "input_shape")}
    return (f"Dataset `{data['name']}` ({data['num_train']:,} training rows, {data['num_test']:,} "
            f"{data['test_split']} rows, {data['num_classes']} classes; arrays sha256 "
            f"`{data['sha256'][:12]}`). Architecture `{results['architecture']}` "
            f"{json.dumps(config)}; recipe: {recipe}. Seeds {results['seeds']}, device "
            f"{results['device']}.")


def _originals(originals: list[dict[str, Any]]) -> str:
    parts = [f"seed {o['seed']}: test accuracy {100 * o['test_accuracy']:.2f}%, trained in "
             f"{o['train_seconds']:.1f} s{_kept(o)}"
             for o in originals]
    return "Original models: " + "; ".join(parts) + "."


def _kept(original: dict[str, Any]) -> str:
    if original.get("pinned"):
        return " (from the pinned set)"
    return " (from the cache)" if original["cache_hit"] else ""


def _legend(seed_count: int, test_split: str) -> list[str]:
    """What every column means and which convention it follows."""
    spread = (f"Means over {seed_count} seeds ± sample standard deviation"
              if seed_count > 1 else "One seed")
    return [
        "Columns (UA, RA, TA, both MIAs and both gaps in percent):", "",
        f"- {spread}, except where a column says otherwise.",
        "- UA = 100 − accuracy on D_f; RA: accuracy on D_r; TA: accuracy on the "
        f"{test_split} split. After class forgetting, TA and both attacks' non-members use "
        f"the {test_split} rows of the retained classes.",
        "- MIA: Lethe's attack, a logistic regression on true-class confidence and output "
        "entropy, trained on equal samples of D_r and the held-out rows (at most 5,000 each); "
        "the share of D_f it calls non-member.",
        "- MIA (SalUn): SalUn's `SVC_MIA_forget_efficacy['confidence']`, an "
        "`SVC(C=3, gamma=\"auto\", kernel=\"rbf\")` on the true-class confidence alone; "
        "members |held-out| random rows of D_r, non-members every held-out row (each side "
        "capped at 5,000); the share of D_f it predicts non-member.",
        "- Avg. Gap: Lethe's convention, per seed the mean |method − that seed's retrain| over "
        "UA, RA, TA and MIA (Lethe's), then averaged over seeds.",
        "- Avg. Gap (SalUn): SalUn's convention, the mean over UA, RA, TA and MIA (SalUn) of "
        "|mean over seeds of the method − mean over seeds of retrain|, one figure per row "
        "(no spread); never above the per-seed convention on the same MIA. Set this column, "
        "not Avg. Gap, beside SalUn's published table.",
        "- JS: Jensen-Shannon divergence (nats, summed over classes) to the retrained model's "
        "outputs on D_f. Speed-up = retrain seconds / method seconds in the same run.",
        "- gate: trials the acceptance gate (default thresholds) would publish, of all trials; "
        "a method that raised counts as not published; retrain is exact and always is.",
    ]


# --- Plot ----------------------------------------------------------------------------------

def plot_tradeoff(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Per scenario, Avg. Gap (lower is better) against speed-up (right is faster), one marker
    per method in every panel, and the goal shaded."""
    scenarios = list(dict.fromkeys(row["scenario"] for row in rows))
    labels = list(dict.fromkeys(row["label"] for row in rows))
    styles = _styles(labels)
    # The legend goes below the panels, in as many rows as it needs: labels can be long.
    columns = 4 if max(map(len, labels)) <= 24 else 2
    legend_height = 0.2 * (1 + -(-(len(labels) + 1) // columns))
    fig, axes = plt.subplots(1, len(scenarios), figsize=(6 * len(scenarios), 5 + legend_height),
                             squeeze=False)
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        _plot_scenario(ax, [row for row in rows if row["scenario"] == scenario], styles)
        ax.set_title(SCENARIO_TITLES.get(scenario, scenario))
    handles = {label: handle for ax in axes[0]
               for handle, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=columns, fontsize=8)
    fig.suptitle(f"Avg. Gap to retrain against speed-up over retrain ({title})")
    fig.tight_layout(rect=(0, legend_height / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _styles(labels: list[str]) -> dict[str, dict[str, Any]]:
    """A colour and marker per method, the same in every panel; retrain a star."""
    colours, markers = plt.get_cmap("tab20").colors, "osD^vPXhp<>"
    styles = {label: {"color": colours[i % len(colours)], "marker": markers[i % len(markers)]}
              for i, label in enumerate(labels)}
    if "retrain" in styles:
        styles["retrain"] = {"color": "black", "marker": "*"}
    return styles


def _plot_scenario(ax, rows: list[dict[str, Any]], styles: dict[str, dict[str, Any]]) -> None:
    done = [row for row in rows if row["avg_gap"] is not None]
    speedups = [row["speedup"] for row in done] or [1.0]
    right = max(max(speedups) * 2, GOAL_SPEEDUP * 3)
    ax.set_xscale("log")
    ax.set_xlim(min(min(speedups) / 2, 0.5), right)
    # Linear up to the goal's gap, logarithmic above: the contenders crowd near zero, while a
    # method that broke the model can be 50 points away.
    ax.set_yscale("symlog", linthresh=GOAL_GAP)
    ax.fill_between([GOAL_SPEEDUP, right], 0, GOAL_GAP, color="tab:green", alpha=0.15,
                    label=f"goal: gap ≤ {GOAL_GAP:g} at ≥ {GOAL_SPEEDUP:g}x")
    for row in done:
        ax.errorbar(row["speedup"], row["avg_gap"], xerr=row["speedup_std"] or None,
                    yerr=row["avg_gap_std"] or None, linestyle="none", capsize=3,
                    markersize=8, label=row["label"], **styles[row["label"]])
    failed = [row["label"] for row in rows if row["avg_gap"] is None]
    if failed:  # no point to draw, but the failure must show
        ax.text(0.98, 0.98, "failed: " + ", ".join(failed), transform=ax.transAxes,
                ha="right", va="top", fontsize=8, color="tab:red")
    ax.set_xlabel("speed-up over retrain (log scale)")
    ax.set_ylabel("Avg. Gap to retrain (points; linear to 2, log above)")
    top = max([row["avg_gap"] for row in done] + [GOAL_GAP]) * 1.5
    ax.set_ylim(-0.1, top)
    ax.set_yticks([tick for tick in GAP_TICKS if tick <= top])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.grid(True, which="both", alpha=0.3)
