"""A PNG of per-day metrics: model vs most-popular vs the Bayes-optimal ceiling."""
from __future__ import annotations


def plot_days(metrics: dict, path: str, ceiling_by_day: dict | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [r for r in metrics["days"] if r.get("eval_day") is not None]
    x = [r["eval_day"] for r in days]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, key in zip(axes, ("recall@20", "ndcg@20")):
        ax.plot(x, [r[key] for r in days], "o-", label="model")
        ax.plot(x, [r["popularity"][key] for r in days], "s--", label="most popular")
        if ceiling_by_day:
            ax.plot(x, [ceiling_by_day.get(str(d), {}).get(key, float("nan")) for d in x], "k:",
                    label="Bayes-optimal ceiling")
        ax.set_title(f"{key.upper()} on the next day")
        ax.set_xlabel("evaluation day (trained on the day before)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
