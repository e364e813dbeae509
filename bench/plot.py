"""Plot benchmark JSON: one panel per bench, each case's implementations as bars; and the README table.

    python bench/plot.py bench/results/h200.json bench/results/h200.png

writes the PNG and, next to it, ``h200.md`` (the Markdown table of
``report.markdown``, also printed). Memory-bound cases (dequant, dequant_rows,
gemv, embedding_bag, layout, pack/unpack) are shown as % of a device copy moving
the same bytes; matmuls (linear) as speedup over cuBLAS fp16, decode over the
fp16 model; host as us per call (lower is better). A case with a target
(``report.TARGETS``) gets a dashed line at it. The ceilings (bench "ceiling")
go into the title.
"""
from __future__ import annotations

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import MEMORY_BOUND, cases, markdown, row, target_of  # noqa: E402

ORDER = ["ours", "rewrite", "ours-prepacked", "ours-plain", "stock", "owned", "split", "naive-triton",
         "torch-compile", "torch-eager", "dequant-cublas", "cublas-fp16", "fp16", "quantized-linear", "torch-matmul",
         "f-linear", "nn-linear", "copy"]
COLORS = {"ours": "#d62728", "rewrite": "#d62728", "ours-prepacked": "#e377c2", "ours-plain": "#ff9896",
          "stock": "#1f77b4", "owned": "#9467bd", "split": "#8c564b", "naive-triton": "#1f77b4",
          "torch-compile": "#ff7f0e", "torch-eager": "#7f7f7f", "dequant-cublas": "#bcbd22",
          "cublas-fp16": "#2ca02c", "fp16": "#2ca02c", "quantized-linear": "#9467bd", "torch-matmul": "#2ca02c",
          "f-linear": "#17becf", "nn-linear": "#8c564b", "copy": "#000000"}


def _kind(bench: str) -> str:
    if bench == "host":
        return "us"
    if bench in MEMORY_BOUND:
        return "copy"
    return "speedup"


def _ceilings(records) -> str:
    out = []
    for (bench, nbit, shape), impls in cases(records).items():
        if bench == "ceiling":
            out.append(f"{shape.split(',', 1)[-1]}: {row(impls, bench, nbit, shape)['ceiling']}")
    return ("ceilings: " + "; ".join(out)) if out else ""


def main(src: str, dst: str) -> None:
    data = json.load(open(src))
    by_bench: dict = {}
    for (bench, nbit, shape), impls in cases(data["records"]).items():
        if bench != "ceiling":
            by_bench.setdefault(bench, []).append((nbit, shape, impls))
    widest = max(len(rows) for rows in by_bench.values())
    fig, axes = plt.subplots(len(by_bench), 1, figsize=(max(12, 0.75 * widest), 3.8 * len(by_bench)),
                             squeeze=False)
    for ax, (bench, rows) in zip(axes[:, 0], by_bench.items()):
        kind = _kind(bench)
        base = "fp16" if bench == "decode" else "cublas-fp16"  # what "x" divides
        impls = [i for i in ORDER if any(i in r[2] for r in rows) and not (kind != "copy" and i == "copy")]
        if kind == "speedup":
            impls = [i for i in impls if i != base] + [base]
        width = 0.8 / len(impls)
        for k, impl in enumerate(impls):
            vals = []
            for nbit, shape, d in rows:
                if impl not in d:
                    vals.append(0.0)
                elif kind == "us":
                    vals.append(d[impl]["us"])
                elif kind == "speedup":
                    vals.append(d[base]["us"] / d[impl]["us"] if base in d else 0.0)
                else:
                    vals.append(100.0 * d["copy"]["us"] / d[impl]["us"] if "copy" in d else 0.0)
            ax.bar([i + k * width for i in range(len(rows))], vals, width, label=impl, color=COLORS.get(impl))
        for i, (nbit, shape, d) in enumerate(rows):  # the target of the case, dashed
            t = target_of(bench, nbit, shape)
            if t is not None and kind != "us":
                y = 100 * t.threshold if t.metric == "copy" else t.threshold
                ax.hlines(y, i - width / 2, i + 0.8 - width / 2, colors="black", linestyles="dashed", lw=0.8)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
        crowded = len(rows) > 8
        ax.set_xticklabels([f"int{n} {s.replace(',', ' ')[:36]}" if crowded else f"int{n}\n{s.replace(',', ' ')}"
                            for n, s, _ in rows], fontsize=6 if crowded else 7,
                           rotation=35 if crowded else 0, ha="right" if crowded else "center")
        ax.set_ylabel({"us": "us per call (host loop)", "copy": "% of copy bandwidth",
                       "speedup": "x fp16 model" if bench == "decode" else "x cuBLAS fp16"}[kind])
        if kind == "copy":
            ax.axhline(100, color="black", lw=0.5)
        elif kind == "speedup":
            ax.axhline(1, color="black", lw=0.5)
        ax.set_title(bench + ("  (dashed: target)" if kind != "us" and any(target_of(bench, n, s) for n, s, _ in rows)
                              else ""), fontsize=10, loc="right")
        ax.legend(fontsize=7, ncol=len(impls), loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False)
    title = f"{data['device']} | torch {data['torch']} | triton {data['triton']} | {data['date']}"
    ceil = _ceilings(data["records"])
    fig.suptitle(title + ("\n" + ceil if ceil else ""), fontsize=9)
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / height))  # room for the two-line title
    fig.savefig(dst, dpi=110)
    md = markdown(data["records"])
    with open(os.path.splitext(dst)[0] + ".md", "w") as f:
        f.write(md + "\n")
    print(md)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
