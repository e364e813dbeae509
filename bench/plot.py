"""Plot benchmark JSON: one panel per bench, each case's implementations as bars.

    python bench/plot.py bench/results/h100.json bench/results/h100.png

Memory-bound standalone cases (dequant, dequant_rows, embedding_bag) are shown
as % of a device copy moving the same bytes; matmuls (gemv, linear) as speedup
over cuBLAS fp16.
"""
from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from report import cases  # noqa: E402

ORDER = ["ours", "rewrite", "stock", "owned", "split", "naive-triton", "torch-compile", "torch-eager",
         "cublas-fp16", "fp16", "copy"]
COLORS = {"ours": "#d62728", "rewrite": "#d62728", "stock": "#1f77b4", "owned": "#9467bd", "split": "#8c564b",
          "naive-triton": "#1f77b4", "torch-compile": "#ff7f0e", "torch-eager": "#7f7f7f",
          "cublas-fp16": "#2ca02c", "fp16": "#2ca02c", "copy": "#000000"}


def main(src: str, dst: str) -> None:
    data = json.load(open(src))
    by_bench: dict = {}
    for (bench, nbit, shape), impls in cases(data["records"]).items():
        by_bench.setdefault(bench, []).append((nbit, shape, impls))
    widest = max(len(rows) for rows in by_bench.values())
    fig, axes = plt.subplots(len(by_bench), 1, figsize=(max(12, 0.75 * widest), 3.6 * len(by_bench)),
                             squeeze=False)
    for ax, (bench, rows) in zip(axes[:, 0], by_bench.items()):
        matmul = bench in ("gemv", "linear", "decode")
        base = "fp16" if bench == "decode" else "cublas-fp16"  # what "x fp16" divides
        impls = [i for i in ORDER if any(i in r[2] for r in rows) and not (matmul and i == "copy")]
        width = 0.8 / len(impls)
        for k, impl in enumerate(impls):
            vals = []
            for nbit, shape, d in rows:
                if impl not in d:
                    vals.append(0.0)
                elif matmul:
                    vals.append(d[base]["us"] / d[impl]["us"] if base in d else 0.0)
                else:
                    vals.append(100.0 * d["copy"]["us"] / d[impl]["us"] if "copy" in d else 0.0)
            ax.bar([i + k * width for i in range(len(rows))], vals, width, label=impl, color=COLORS.get(impl))
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
        crowded = len(rows) > 8
        ax.set_xticklabels([f"int{n} {s.replace(',', ' ')[:34]}" if crowded else f"int{n}\n{s.replace(',', ' ')}"
                            for n, s, _ in rows], fontsize=6 if crowded else 7,
                           rotation=35 if crowded else 0, ha="right" if crowded else "center")
        ax.set_ylabel(("x fp16 model" if bench == "decode" else "x cuBLAS fp16") if matmul else "% of copy bandwidth")
        if not matmul:
            ax.axhline(100, color="black", lw=0.5)
        else:
            ax.axhline(1, color="black", lw=0.5)
        ax.set_title(bench, fontsize=10)
        ax.legend(fontsize=7, ncol=len(impls), loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False)
    fig.suptitle(f"{data['device']} | torch {data['torch']} | triton {data['triton']} | {data['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
