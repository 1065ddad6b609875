"""sweep.png: the best score per architecture x masking cell, and every trial's learning
curve (its metric at each evaluated window), early-stopped trials drawn dashed and ending
in a cross so that what the scheduler cut is visible."""
from __future__ import annotations


def plot_sweep(compiled: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metric, trials = compiled["metric"], compiled["trials"]
    fig, (cells, curves) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    best: dict[tuple[str, str], float] = {}
    sign = 1 if compiled["mode"] == "max" else -1
    rejected = set()
    base = compiled.get("base", {})
    for t in trials:
        cell = tuple(str(t["params"].get(k, base.get(k, "base"))) for k in ("model.arch", "model.masking"))
        if t["status"] == "rejected":
            rejected.add(cell)
        if t["score"] is None:
            continue
        if cell not in best or sign * t["score"] > sign * best[cell]:
            best[cell] = t["score"]
    archs = sorted({a for a, _ in best | dict.fromkeys(rejected)})
    maskings = sorted({m for _, m in best | dict.fromkeys(rejected)})
    if best:
        grid = [[best.get((a, m), float("nan")) for m in maskings] for a in archs]
        image = cells.imshow(grid, cmap="viridis", aspect="auto")
        for i, a in enumerate(archs):
            for j, m in enumerate(maskings):
                text = f"{best[(a, m)]:.3f}" if (a, m) in best else "rejected" if (a, m) in rejected else ""
                cells.text(j, i, text, ha="center", va="center", color="white" if (a, m) in best else "gray",
                           fontsize=9)
        cells.set_xticks(range(len(maskings)), maskings)
        cells.set_yticks(range(len(archs)), archs)
        fig.colorbar(image, ax=cells, label=f"best {metric}")
    else:
        cells.text(0.5, 0.5, "no trial reported", ha="center", va="center", transform=cells.transAxes)
    cells.set_title(f"best {metric} per architecture x masking")
    cells.set_xlabel("masking")
    cells.set_ylabel("architecture")
    for t in trials:
        xs = [r["evaluation"] for r in t["reports"]]
        ys = [r[metric] for r in t["reports"]]
        if not xs:
            continue
        stopped = t["status"] != "finished"
        line, = curves.plot(xs, ys, "--" if stopped else "-", marker="o", markersize=3, alpha=0.8,
                            label=t["trial"].rsplit("_", 1)[-1])
        if stopped:
            curves.plot(xs[-1], ys[-1], "x", color=line.get_color(), markersize=9)
    curves.set_title(f"learning curves (dashed, x: {sum(t['status'] != 'finished' and bool(t['reports']) for t in trials)}"
                     " stopped early)")
    curves.set_xlabel("evaluation (a window, or an epoch with train.eval_every: epoch)")
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set_ylabel(metric)
    curves.grid(alpha=0.3)
    if 0 < len(trials) <= 16:
        curves.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
