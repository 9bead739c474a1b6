"""Renders the benchmark figures recorded in bench/results/*.json as PNGs for the docs.

    python bench/plots.py [--out docs/img]

Two kinds of record:
- a comparison (`rows`, each with `benchmark` and `ratio`, flax_lm's speed over the file's
  `reference`: PyTorch for the CPU and GPU benchmarks, MaxText for the TPU ones): one bar chart a
  file, flax_lm against its reference at 1.0, named after the file;
- a loss curve (`steps` and `train_loss`, with an optional `validation`): the default job's.
Needs matplotlib (the `docs` extra); reads nothing but the JSON files.
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def comparison(record: dict, path: Path) -> None:
    """A horizontal bar a benchmark: flax_lm's ratio, the reference's 1.0, and a floor if it has one."""
    rows = record["rows"]
    reference = record.get("reference", "reference")
    fig, ax = plt.subplots(figsize=(9.5, 1.2 + 0.8 * len(rows)))
    names = [row["benchmark"] for row in rows][::-1]
    ratios = [row["ratio"] for row in rows][::-1]
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], ratios, height=0.4, color="#1f77b4", label="flax_lm")
    ax.barh([i - 0.2 for i in y], [1.0] * len(rows), height=0.4, color="#bbbbbb", label=reference)
    for i, ratio in zip(y, ratios):
        ax.text(ratio, i + 0.2, f" {ratio:.2f}x", va="center", fontsize=9)
    floors = [(i, row["floor"]) for i, row in zip(y, rows[::-1]) if "floor" in row]
    for i, floor in floors:
        ax.plot([floor, floor], [i - 0.45, i + 0.45], color="#d62728", linewidth=1.5,
                label="floor" if i == floors[0][0] else None)
    ax.set_yticks(list(y), names, fontsize=9)
    ax.set_xlabel(f"speed relative to {reference} (higher is better)")
    ax.set_xlim(0, max(ratios + [1.0]) * 1.2)
    ax.set_title(f"{record['title']}\n{record['machine']}, {record['versions']}, {record['date']}", fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def loss_curve(record: dict, path: Path) -> None:
    """Training loss against step, with the final validation loss as a point."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(record["steps"], record["train_loss"], label="training loss")
    if "validation" in record:
        v = record["validation"]
        ax.scatter([v["step"]], [v["loss"]], color="#d62728", zorder=3,
                   label=f"validation loss {v['loss']:.2f} (perplexity {v['perplexity']:.0f})")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(f"{record['command']}\n{record['machine']}, {record['versions']}", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "img"),
                        help="the folder the PNGs are written to")
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    for source in sorted(RESULTS.glob("*.json")):
        record = json.loads(source.read_text(encoding="utf-8"))
        path = out / f"{source.stem}.png"
        if "rows" in record:
            comparison(record, path)
        elif "train_loss" in record:
            loss_curve(record, path)
        else:
            continue
        print(f"{source.name} -> {path}")


if __name__ == "__main__":
    main()
