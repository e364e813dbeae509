"""Tables from benchmark records: text (printed last by run.py) and Markdown (README)."""
from __future__ import annotations

import json
import sys
from collections import OrderedDict

BASELINES = ("naive-triton", "torch-compile", "torch-eager", "cublas-fp16", "fp16")  # fp16: the decode bench's fp16 model


def cases(records):
    """OrderedDict (bench, nbit, shape) -> {impl: record}."""
    out: "OrderedDict" = OrderedDict()
    for r in records:
        out.setdefault((r["bench"], r["nbit"], r["shape"]), {})[r["impl"]] = r
    return out


def row(impls: dict) -> dict:
    """Derived figures of one case: ours in us, % of copy bandwidth, speedups."""
    ours = impls.get("ours") or impls.get("rewrite")
    d = {"ours_us": ours["us"] if ours else None}
    if ours and "copy" in impls:
        d["pct_copy"] = 100.0 * impls["copy"]["us"] / ours["us"]
        if ours.get("bytes"):
            d["gbps"] = ours["bytes"] / ours["us"] / 1e3
    for b in BASELINES + ("stock",):
        if ours and b in impls:
            d[b] = impls[b]["us"] / ours["us"]
    return d


def _fmt(v, spec):
    if v is None:
        width = "".join(c for c in spec.split(".")[0] if c.isdigit())
        return "-".rjust(int(width)) if width else "-"
    return format(v, spec)


def table(records) -> str:
    lines = [f"{'bench':<14}{'nbit':>5}  {'shape':<42}{'ours us':>9}{'GB/s':>8}{'%copy':>7}"
             + "".join(f"{'x ' + b:>17}" for b in BASELINES + ("stock",))]
    for (bench, nbit, shape), impls in cases(records).items():
        d = row(impls)
        lines.append(f"{bench:<14}{nbit:>5}  {shape[:41]:<42}{_fmt(d['ours_us'], '9.1f')}"
                     f"{_fmt(d.get('gbps'), '8.0f')}{_fmt(d.get('pct_copy'), '7.1f')}"
                     + "".join(f"{_fmt(d.get(b), '17.2f')}" for b in BASELINES + ("stock",)))
    return "\n".join(lines)


def markdown(records) -> str:
    head = ("| bench | nbit | shape | ours (us) | % of copy | vs naive Triton | vs torch.compile "
            "| vs torch eager | vs cuBLAS fp16 | vs fp16 model |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for (bench, nbit, shape), impls in cases(records).items():
        d = row(impls)
        cells = [bench, str(nbit), f"`{shape}`", _fmt(d["ours_us"], ".1f"), _fmt(d.get("pct_copy"), ".1f")]
        cells += [(_fmt(d.get(b), ".2f") + "x") if d.get(b) else "-" for b in BASELINES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    data = json.load(open(sys.argv[1]))
    print(markdown(data["records"]) if "--md" in sys.argv else table(data["records"]))
