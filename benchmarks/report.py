"""Markdown tables from one pytest-benchmark run (the tables of docs/benchmarks.md are made with this).

    python -m pytest benchmarks/ --benchmark-json=bench.json
    python benchmarks/report.py bench.json

Per-layer rows: median ms of each implementation, numba's GFLOP/s and its fraction of the
sgemm rate measured in the same run, and numba/torch. Whole-model rows: median ms of each
implementation (and weight dtype) and the ratios to ONNX Runtime. Medians throughout.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def _load(path):
    with open(path) as f:
        data = json.load(f)
    return data["benchmarks"], data.get("machine_info", {})


def _ms(b):
    return b["stats"]["median"] * 1e3 if b else None


def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def layer_table(benchmarks) -> str:
    sgemm = [b["extra_info"]["flops"] / b["stats"]["median"] for b in benchmarks if b.get("group") == "sgemm"]
    rate = max(sgemm) if sgemm else None
    rows = defaultdict(dict)
    for b in benchmarks:
        info = b.get("extra_info", {})
        if "layer" in info:
            rows[(info["layer"], info["batch"])][info["impl"]] = b
    out = []
    if rate:
        out.append(f"sgemm rate in this run (2048x2048, NumPy's OpenBLAS): {rate / 1e9:.0f} GFLOP/s\n")
    out.append("| layer | batch | numba | numpy | torch | numba GFLOP/s | of sgemm | numba/torch |")
    out.append("|---|---|---|---|---|---|---|---|")
    for (layer, batch), impls in rows.items():
        nb, npy, tr = impls.get("numba"), impls.get("numpy"), impls.get("torch")
        flops = (nb or npy or {}).get("extra_info", {}).get("flops") or 0
        gf = flops / nb["stats"]["median"] / 1e9 if nb and flops else None
        share = f"{gf * 1e9 / rate:.0%}" if gf and rate else "-"
        ratio = _ms(nb) / _ms(tr) if nb and tr else None
        out.append(f"| {layer} | {batch} | {_fmt(_ms(nb))} | {_fmt(_ms(npy))} | {_fmt(_ms(tr))} | "
                   f"{_fmt(gf, '.0f') if gf else '-'} | {share} | {_fmt(ratio)} |")
    return "\n".join(out)


ORDER = ["numba", "numba-bfloat16", "numba-int8", "numpy", "torch", "onnxruntime"]


def model_table(benchmarks) -> str:
    rows = defaultdict(dict)
    for b in benchmarks:
        info = b.get("extra_info", {})
        if "variant" in info and "impl" in info and b.get("group", "").startswith("model"):
            rows[(info["variant"], info["batch"])][info["impl"]] = b
    impls = sorted({i for r in rows.values() for i in r},
                   key=lambda i: ORDER.index(i)
                   if i in ORDER else 99)
    ratios = [i for i in impls if i.startswith("numba")]
    head = "| model | batch | " + " | ".join(impls) + " | " + " | ".join(f"{i}/ORT" for i in ratios) + " |"
    out = [head, "|" + "---|" * (2 + len(impls) + len(ratios))]
    for (variant, batch), r in sorted(rows.items()):
        ort = _ms(r.get("onnxruntime"))
        cells = [_fmt(_ms(r.get(i)), ".1f") for i in impls]
        rat = [_fmt(_ms(r.get(i)) / ort) if ort and r.get(i) else "-" for i in ratios]
        out.append(f"| {variant} | {batch} | " + " | ".join(cells) + " | " + " | ".join(rat) + " |")
    return "\n".join(out)


def paired_table(benchmarks) -> str:
    """The interleaved comparison: median (quartiles) of fastalex's time over ONNX Runtime's,
    pair by pair (``test_paired_with_onnxruntime``); empty when it did not run."""
    rows = {}
    for b in benchmarks:
        info = b.get("extra_info", {})
        if info.get("paired") == "onnxruntime" and "ratio_median" in info:
            rows[(info["variant"], info["batch"], info["impl"])] = info
    if not rows:
        return ""
    out = ["| model | batch | fastalex | time / ONNX Runtime's, pair by pair: median (quartiles) | pairs |",
           "|---|---|---|---|---|"]
    for (variant, batch, impl), info in sorted(rows.items()):
        out.append(f"| {variant} | {batch} | {impl} | {info['ratio_median']:.2f} "
                   f"({info['ratio_q1']:.2f}-{info['ratio_q3']:.2f}) | {info['pairs']} |")
    return "\n".join(out)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.strip())
        return 2
    benchmarks, machine = _load(argv[0])
    if machine:
        print(f"<!-- {machine.get('cpu', {}).get('brand_raw', '')}, python {machine.get('python_version', '')} -->\n")
    print(layer_table(benchmarks))
    print()
    print(model_table(benchmarks))
    paired = paired_table(benchmarks)
    if paired:
        print()
        print(paired)
    return 0


if __name__ == "__main__":
    sys.exit(main())
