"""``python -m triton_dequant.inspect``: the kernels each op's CUDA path launches,
compiled on this CPU for sm_80 and sm_90, reported as JSON, dumped to files; and
the planner of each op agrees with its host path (the same call from real tensors
and from the description ``inspect`` takes)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from triton_dequant import inspect as tdi
from triton_dequant.kernels import _plan, dequant, embedding_bag as eb, linear as kl

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
ARCHS = (80, 90)
# one call per op (the CLI's arguments), each compiled for both architectures
CALLS = {
    "dequantize": ["--shape", "1024,512", "--nbit", "4", "--scale-shape", "1024,1"],
    "dequantize_rows": ["--rows", "1024", "--n-codes", "1000", "--nbit", "2", "--container", "int16"],
    "embedding_bag": ["--n-codes", "128", "--nbit", "4", "--lookups", "16", "--weighted"],
    "linear": ["--M", "1", "--K", "4096", "--N", "4096", "--nbit", "4", "--group-size", "128"],
}


def _env():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # compile for NVIDIA targets (conftest sets it without a GPU)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "python"), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """One process runs the CLI's main() for every (op, arch), dumping to a directory
    each; a second one runs ``python -m triton_dequant.inspect`` itself."""
    base = tmp_path_factory.mktemp("inspect")
    jobs = {f"{op}-{arch}": CALLS[op] + ["--arch", str(arch), "--dump", str(base / f"{op}-{arch}")]
            for op in CALLS for arch in ARCHS}
    script = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from triton_dequant import inspect
        out = {{}}
        for name, argv in {json.dumps(jobs)}.items():
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                inspect.main([name.rsplit("-", 1)[0]] + argv)
            out[name] = json.loads(buf.getvalue())
        json.dump(out, sys.stdout)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(r.stdout)
    cli = subprocess.run([sys.executable, "-m", "triton_dequant.inspect", "linear", "--M", "16", "--K", "8192",
                          "--N", "1024", "--nbit", "4", "--arch", "80"], capture_output=True, text=True, env=_env(),
                         timeout=900)
    assert cli.returncode == 0, cli.stderr[-4000:]
    res["cli"] = json.loads(cli.stdout)
    return base, res


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("op", list(CALLS))
def test_inspect_reports_every_kernel(reports, op, arch):
    base, res = reports
    entries = res[f"{op}-{arch}"]
    plan, _ = tdi.plan_of(op, **_call_of(op, arch))
    assert [e["name"] for e in entries] == [k.name for k in plan.kernels] and entries
    for e, k in zip(entries, plan.kernels):
        assert e["arch"] == arch and e["num_warps"] == k.num_warps and e["num_stages"] == k.num_stages
        assert e["grid"] == list(k.grid) and e["signature"] == k.signature
        assert 0 < e["registers"] <= 255 and e["spills"] >= 0 and e["shared"] >= 0
        assert e["instructions"] == sum(e["sass"].values()) > 0
        assert e["sass"].get("LDG", 0) > 0 and e["sass"].get("EXIT", 0) > 0
        assert e["main_loop"]["instructions"] == sum(e["main_loop"]["sass"].values())
        if op in ("linear", "embedding_bag"):  # both loop over K / the bag's lookups
            assert e["main_loop"]["instructions"] > 0
        for ext in ("ttgir", "ptx", "cubin", "sass"):
            path = base / f"{op}-{arch}" / f"{k.name}.{ext}"
            assert path.exists() and path.stat().st_size > 0
        ptx = (base / f"{op}-{arch}" / f"{k.name}.ptx").read_text()
        assert f".target sm_{arch}" in ptx and "// triton_dequant nbit=" in ptx
        assert e["files"] == [str(base / f"{op}-{arch}" / f"{k.name}.{x}") for x in ("ttgir", "ptx", "cubin", "sass")]


def test_inspect_linear_tensor_cores_on_sm80(reports):
    """M = 16: the tensor-core kernel (split-K, 8 steps per CTA); on sm_80 its main loop has HMMA."""
    (e,) = reports[1]["cli"]
    assert e["name"] == "mm_kernel" and e["main_loop"]["sass"].get("HMMA", 0) > 0


def test_inspect_gemv_sm90(reports):
    """The decode GEMV on sm_90: 16-byte weight loads, fp16x2 FMAs, no spills."""
    (e,) = reports[1]["linear-90"]
    assert e["name"] == "gemv_kernel" and e["spills"] == 0
    loop = e["main_loop"]["sass"]
    assert loop.get("LDG", 0) > 0 and loop.get("HFMA2", 0) + loop.get("HMUL2", 0) > 0


def _call_of(op, arch):
    """CALLS[op] as the keyword arguments of plan_of (through the CLI's own parser)."""
    a = tdi._parser().parse_args([op] + CALLS[op] + ["--arch", str(arch)])
    call = {k: v for k, v in vars(a).items() if k not in ("op", "dump", "modifiers", "sms")}
    return dict(call, num_sms=None)


# --- the planners are the host paths ---------------------------------------------------------

def _same(p, q):
    assert len(p.kernels) == len(q.kernels)
    for a, b in zip(p.kernels, q.kernels):
        assert a == b and a.tail == b.tail and a.grid == b.grid


@pytest.mark.parametrize("arch", ARCHS)
def test_linear_planner_is_the_host_path(arch):
    M, K, N = 3, 512, 256
    x = torch.randn(M, K).half()
    qw = torch.zeros(K // 8, N, dtype=torch.int32)
    s, h = torch.rand(4, N), torch.rand(4, N)
    call, *_ = kl._prepare(x, qw, s, h, 4, 128, 0, True)
    t = _plan.cuda_target(arch)
    _same(kl.plan(call, t), tdi.plan_linear(M=M, K=K, N=N, nbit=4, group_size=128, scale_dtype="fp32",
                                            signed=True, arch=arch)[0])


@pytest.mark.parametrize("dim,scale_shape", [(-1, (64, 1)), (1, (4, 1, 96)), (-1, ())])
def test_dequantize_planner_is_the_host_path(dim, scale_shape):
    shape = (64, 100) if dim == -1 else (4, 100, 96)
    x = torch.zeros(shape, dtype=torch.int16)
    s = torch.ones(scale_shape, dtype=torch.bfloat16)
    call, *_ = dequant._prepare_dequantize(x, s, s, 4, torch.float32, dim % len(shape), False, None, 8)
    _same(dequant.plan_dequantize(call, _plan.cuda_target(90)),
          tdi.plan_dequantize(shape=shape, nbit=4, container="int16", dtype="fp32", scale_dtype="bf16",
                              scale_shape=scale_shape, dim=dim)[0])


def test_dequantize_rows_planner_is_the_host_path():
    from triton_dequant import packing
    rows = packing.pack_rows(torch.randn(8, 100), 2, container=torch.uint8, row_align=16)
    call, _ = dequant._prepare_rows(rows, 2, torch.float16, 100, False, None, 8)
    _same(dequant.plan_dequantize_rows(call, _plan.cuda_target(80)),
          tdi.plan_dequantize_rows(rows=8, n_codes=100, nbit=2, container="uint8", row_align=16, arch=80)[0])


@pytest.mark.parametrize("weighted", [False, True])
def test_embedding_bag_planner_is_the_host_path(weighted):
    from triton_dequant import packing
    rows = packing.pack_rows(torch.randn(32, 64), 4, row_align=16)
    bags, lookups = 5, 3
    idx = torch.randint(0, 32, (bags * lookups,))
    off = torch.arange(bags) * lookups
    w = torch.rand(bags * lookups) if weighted else None
    call, *_ = eb._prepare(rows, idx, off, 4, "sum", w, 64, torch.float16, False, False)
    _same(eb.plan_embedding_bag(call, _plan.cuda_target(90)),
          tdi.plan_embedding_bag(rows=32, n_codes=64, nbit=4, bags=bags, lookups=lookups, weighted=weighted,
                                 dtype="fp16", row_align=16)[0])


def test_bad_descriptions():
    with pytest.raises(ValueError, match="nbit"):
        tdi.plan_of("linear", nbit=3)
    with pytest.raises(ValueError, match="group_size"):
        tdi.plan_of("linear", K=4096, group_size=100)
    with pytest.raises(ValueError, match="container"):
        tdi.plan_of("dequantize", container="int64")
    with pytest.raises(ValueError, match="op"):
        tdi.plan_of("matmul")
    with pytest.raises(ValueError, match="arch"):
        tdi.plan_of("linear", arch=7)


def test_compile_refuses_past_shared_memory():
    """A plan whose kernel needs more shared memory than the SM has fails at compile,
    on the CPU, with one line naming the kernel and both sizes (on a GPU the driver
    would refuse it only at load). The config forces the 3 stages the default plan
    once took (294912 B on sm_90)."""
    r = subprocess.run([sys.executable, "-m", "triton_dequant.inspect", "linear", "--M", "100", "--K", "8192",
                        "--N", "8192", "--nbit", "8", "--container", "uint8", "--group-size", "8", "--config",
                        "num_stages=3", "--arch", "90"], capture_output=True, text=True, env=_env(), timeout=900)
    assert r.returncode == 1, r.stderr[-2000:]
    line = r.stderr.strip()
    assert "\n" not in line and "mm_kernel needs 294912 bytes of shared memory, sm_90 has 232448" in line
