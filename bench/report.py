"""Tables from benchmark records: text (printed last by run.py) and Markdown (README), and the targets.

    python bench/report.py bench/results/h200.json [--md]

Per case (bench, nbit, shape): ours in us; ``%copy`` = copy_us / ours_us (the
device copy of the case's bytes: the memory wall) for memory-bound benches;
``x B`` = B's us / ours' us for each other implementation B (> 1: ours faster);
and, where the project has a target (:data:`TARGETS`, the one home of the
figures), MET or MISSED with the margin (points of % of copy, or x of speedup).
Bench "ceiling" rows give GB/s (copy) and TFLOP/s (cuBLAS fp16) instead.
"""
from __future__ import annotations

import json
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

# baselines and variants shown as "x impl" = impl us / ours us, in this column order
RATIOS = ("cublas-fp16", "fp16", "naive-triton", "torch-compile", "torch-eager", "ours-plain", "ours-prepacked",
          "dequant-cublas", "torch-matmul", "f-linear", "nn-linear", "quantized-linear", "stock")
BASELINES = RATIOS  # (old name)
SHORT = {"cublas-fp16": "cublas", "naive-triton": "naive", "torch-compile": "compile", "torch-eager": "eager",
         "ours-plain": "plain", "ours-prepacked": "prepack", "dequant-cublas": "dq+cublas", "torch-matmul": "matmul",
         "f-linear": "F.linear", "nn-linear": "nn.Linear", "quantized-linear": "QLinear"}  # text table headers
MEMORY_BOUND = ("dequant", "dequant_rows", "gemv", "embedding_bag", "layout", "pack", "unpack")


@dataclass(frozen=True)
class Target:
    """``metric`` of ours in every case of ``bench`` whose nbit is in ``nbits`` (all if
    empty) and whose shape fields (``"M=16,K=..."`` -> {"M": "16", ...}) match
    ``where`` must be >= ``threshold``. Metrics: ``copy`` = copy_us / ours_us,
    ``cublas`` = cuBLAS fp16 us / ours us, ``fp16`` = the fp16 model's us / ours us."""
    bench: str
    metric: str
    threshold: float
    label: str
    nbits: tuple = ()
    where: dict = field(default_factory=dict)


def _linear(ms, t):
    return Target("linear", "cublas", t, f"tensor core M={'/'.join(ms)} >= {t}x cuBLAS fp16", where={"M": tuple(ms)})


# The targets of issue 14 (the H200 performance run), one place.
TARGETS = (
    Target("dequant", "copy", 0.97, "dequant >= 97% of copy"),
    Target("dequant_rows", "copy", 0.97, "dequant_rows >= 97% of copy"),
    Target("gemv", "copy", 0.85, "GEMV int8/int4 >= 85% of copy", nbits=(8, 4)),
    Target("gemv", "copy", 0.75, "GEMV int2 >= 75% of copy", nbits=(2,)),
    _linear(("16",), 2.5),
    _linear(("32",), 2.2),
    _linear(("64",), 1.6),
    _linear(("128",), 1.1),
    _linear(("2", "4", "8", "256"), 1.0),  # "never below 1.0x up to M = 256"
    Target("embedding_bag", "copy", 0.85, "embedding bag >= 85% of a sector-granular copy"),
    Target("decode", "fp16", 2.5, "decode int4 >= 2.5x fp16 per token at batch 1", where={"batch": ("1",)}),
)

_METRIC_IMPL = {"copy": "copy", "cublas": "cublas-fp16", "fp16": "fp16"}


def shape_fields(shape: str) -> dict:
    return dict(kv.split("=", 1) for kv in shape.split(",") if "=" in kv)


def target_of(bench: str, nbit: int, shape: str) -> Optional[Target]:
    f = shape_fields(shape)
    for t in TARGETS:
        if t.bench == bench and (not t.nbits or nbit in t.nbits) and all(f.get(k) in v for k, v in t.where.items()):
            return t
    return None


def cases(records):
    """OrderedDict (bench, nbit, shape) -> {impl: record}."""
    out: "OrderedDict" = OrderedDict()
    for r in records:
        out.setdefault((r["bench"], r["nbit"], r["shape"]), {})[r["impl"]] = r
    return out


def row(impls: dict, bench: str = "", nbit: int = 0, shape: str = "") -> dict:
    """Derived figures of one case: ours in us, % of copy, ratios, the target's verdict."""
    ours = impls.get("ours") or impls.get("rewrite")
    d = {"ours_us": ours["us"] if ours else None}
    if bench == "ceiling":
        r = next(iter(impls.values()))
        d["ours_us"] = r["us"]
        d["ceiling"] = (f"{r['gbps']:.0f} GB/s" if "gbps" in r else f"{r['tflops']:.0f} TFLOP/s" if "tflops" in r
                        else "")
        return d
    if ours and "copy" in impls:
        d["pct_copy"] = 100.0 * impls["copy"]["us"] / ours["us"]
        if ours.get("bytes"):
            d["gbps"] = ours["bytes"] / ours["us"] / 1e3
    for b in RATIOS:
        if ours and b in impls:
            d[b] = impls[b]["us"] / ours["us"]
    t = target_of(bench, nbit, shape)
    if t is not None:
        base = impls.get(_METRIC_IMPL[t.metric])
        if ours and base:
            v = base["us"] / ours["us"]
            if t.metric == "copy":
                d["target"] = f">={100 * t.threshold:.0f}%copy"
                margin = f"{100 * (v - t.threshold):+.1f}pt"
            else:
                d["target"] = f">={t.threshold:.1f}x"
                margin = f"{v - t.threshold:+.2f}x"
            d["met"] = v >= t.threshold
            d["verdict"] = f"{'MET' if d['met'] else 'MISSED'} {margin}"
            d["value"] = v
            d["rule"] = t
        else:
            d["target"] = t.label
            d["verdict"] = "NOT MEASURED"
    return d


def _fmt(v, spec):
    if v is None:
        width = "".join(c for c in spec.split(".")[0] if c.isdigit())
        return "-".rjust(int(width)) if width else "-"
    return format(v, spec)


def _rows(records):
    return [(k, row(impls, *k)) for k, impls in cases(records).items()]


def _ratio_cols(rows):
    return [b for b in RATIOS if any(b in d for _, d in rows)]


def summary(records) -> str:
    """Targets met / missed (missed first, worst first)."""
    rows = _rows(records)
    judged = [(k, d) for k, d in rows if "verdict" in d]
    if not judged:
        return "targets: none judged"
    met = [x for x in judged if x[1].get("met")]
    missed = [x for x in judged if x[1].get("met") is False]
    absent = [x for x in judged if "met" not in x[1]]
    lines = [f"targets: {len(met)} MET, {len(missed)} MISSED, {len(absent)} not measured (of {len(judged)} cases)"]
    for (bench, nbit, shape), d in sorted(missed, key=lambda x: x[1]["value"] / x[1]["rule"].threshold):
        lines.append(f"  MISSED {bench} int{nbit} {shape}: {d['verdict'].split()[1]} ({d['rule'].label})")
    for (bench, nbit, shape), d in absent:
        lines.append(f"  NOT MEASURED {bench} int{nbit} {shape} ({d['target']})")
    return "\n".join(lines)


def table(records) -> str:
    rows = _rows(records)
    cols = _ratio_cols(rows)
    lines = [f"{'bench':<14}{'nbit':>5}  {'shape':<42}{'ours us':>10}{'%copy':>7}"
             + "".join(f"{'x ' + SHORT.get(b, b):>12}" for b in cols) + f"  {'target':<11}{'result'}"]
    for (bench, nbit, shape), d in rows:
        if bench == "ceiling":
            lines.append(f"{bench:<14}{nbit:>5}  {shape[:41]:<42}{_fmt(d['ours_us'], '10.1f')}  {d['ceiling']}")
            continue
        lines.append(f"{bench:<14}{nbit:>5}  {shape[:41]:<42}{_fmt(d['ours_us'], '10.1f')}"
                     f"{_fmt(d.get('pct_copy'), '7.1f')}"
                     + "".join(_fmt(d.get(b), "12.2f") for b in cols)
                     + f"  {d.get('target', ''):<11}{d.get('verdict', '')}")
    lines.append("(x B = B's us / ours' us: > 1 means ours is faster; %copy = copy of the case's bytes / ours; "
                 "x prepack at gemv = the tensor-core kernel on prepacked weights at M = 1 / the GEMV)")
    lines.append(summary(records))
    return "\n".join(lines)


_MD_NAMES = {"cublas-fp16": "cuBLAS fp16", "fp16": "fp16 model", "naive-triton": "naive Triton",
             "torch-compile": "torch.compile", "torch-eager": "torch eager", "ours-plain": "ours, plain layout",
             "ours-prepacked": "ours, prepacked", "dequant-cublas": "dequant + cuBLAS", "torch-matmul": "torch.matmul",
             "f-linear": "F.linear", "nn-linear": "nn.Linear", "quantized-linear": "QuantizedLinear"}


def markdown(records) -> str:
    rows = _rows(records)
    cols = _ratio_cols(rows)
    head = (["bench", "nbit", "shape", "ours (us)", "% of copy"] + [f"vs {_MD_NAMES.get(b, b)}" for b in cols]
            + ["target", "result"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (bench, nbit, shape), d in rows:
        if bench == "ceiling":
            cells = [bench, "-", f"`{shape}`", _fmt(d["ours_us"], ".1f"), d["ceiling"]] + ["-"] * (len(cols) + 2)
        else:
            cells = [bench, str(nbit), f"`{shape}`", _fmt(d["ours_us"], ".1f"), _fmt(d.get("pct_copy"), ".1f")]
            cells += [(_fmt(d.get(b), ".2f") + "x") if d.get(b) else "-" for b in cols]
            cells += [d.get("target", "-").replace(">=", "≥"), d.get("verdict", "-")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("`vs X` = X's time / ours (> 1: ours faster). " + summary(records).splitlines()[0])
    return "\n".join(lines)


if __name__ == "__main__":
    data = json.load(open(sys.argv[1]))
    print(markdown(data["records"]) if "--md" in sys.argv else table(data["records"]))
