"""The launch cache (kernels/_plan.py) without a GPU: a fake loader, stream and
device stand in for the driver, so the CUDA host path of every op runs on the CPU up
to the launcher call. Two calls that differ only in one tensor's dtype, only in the
device or only in the lowering state resolve to different compiled kernels; calls
that differ only in runtime values Triton does not specialise on share one."""
import contextlib

import pytest
import torch
import triton.language as tl
from triton._C.libtriton import native_specialize_impl
from triton.backends.nvidia.compiler import CUDABackend

from triton_dequant import language
from triton_dequant.kernels import _plan, dequant, embedding_bag as eb, linear as kl


class FakeDriver:
    """Records loads (compile + module load per device) and launches."""

    def __init__(self):
        self.loads = []     # (kernel key, device index, capability)
        self.launches = []  # (loaded id, device index, grid, args)

    def load(self, k, device_index, target):
        self.loads.append((k.key, device_index, target.arch))
        n = len(self.loads)

        def run(gx, gy, gz, stream, function, packed, meta, enter, exit_, *args):
            self.launches.append((function, device_index, (gx, gy, gz), args))

        return run, n, None, None


@pytest.fixture
def fake(monkeypatch):
    """CPU tensors take the CUDA path: cuda targets (sm_90 on device 0, sm_80 on
    device 1), a fake loader and stream; the launch cache starts empty."""
    drv = FakeDriver()
    targets = {0: _plan.cuda_target(90), 1: _plan.cuda_target(80)}
    current = {"index": 0}
    monkeypatch.setattr(_plan, "_LOADED", {})
    monkeypatch.setattr(_plan, "_load", drv.load)
    monkeypatch.setattr(_plan, "_stream", lambda idx: 1000 + idx)
    monkeypatch.setattr(_plan, "_current_device", lambda: current["index"])
    monkeypatch.setattr(_plan, "_on_device", lambda idx: contextlib.nullcontext())
    monkeypatch.setattr(_plan, "target_of", lambda device: targets[current["index"]])
    drv.current = current
    return drv


def _linear_args(x_dtype=torch.float16, s_dtype=torch.float16, M=1, K=256, N=128, groups=1):
    x = torch.randn(M, K).to(x_dtype)
    qw = torch.randint(-2 ** 31, 2 ** 31 - 1, (K // 8, N), dtype=torch.int32)
    shape = (N,) if groups == 1 else (groups, N)
    return x, qw, torch.rand(shape).to(s_dtype), torch.rand(shape).to(s_dtype)


def _linear(args, signed=False):
    x, qw, s, h = args
    return kl.linear(x, qw, s, h, 4, x.shape[1] // (s.shape[0] if s.dim() == 2 else 1), 0, signed)


# --- the case: same shapes, other dtypes ---------------------------------------

@pytest.mark.parametrize("first,second", [
    (dict(s_dtype=torch.float16), dict(s_dtype=torch.float32)),   # scale/shift dtype (GEMV)
    (dict(s_dtype=torch.float16), dict(s_dtype=torch.bfloat16)),
    (dict(x_dtype=torch.float16), dict(x_dtype=torch.bfloat16)),  # x dtype
    (dict(M=16, x_dtype=torch.float16), dict(M=16, x_dtype=torch.bfloat16)),  # x dtype, tensor-core path
    (dict(M=16, s_dtype=torch.float16), dict(M=16, s_dtype=torch.float32)),
], ids=["scale16-32", "scale16-bf16", "x16-bf16", "mm-x16-bf16", "mm-scale16-32"])
def test_linear_dtype_changes_the_kernel(fake, first, second):
    _linear(_linear_args(**first))
    _linear(_linear_args(**second))
    assert len(fake.loads) == 2 and fake.loads[0][0] != fake.loads[1][0]
    assert fake.launches[0][0] != fake.launches[1][0]  # different loaded functions
    sig0, sig1 = dict(fake.loads[0][0][1]), dict(fake.loads[1][0][1])
    assert sig0 != sig1
    _linear(_linear_args(**first))  # the first one again: cached, no new load
    assert len(fake.loads) == 2 and fake.launches[2][0] == fake.launches[0][0]


def test_linear_pointer_signature_follows_the_tensors(fake):
    _linear(_linear_args(x_dtype=torch.bfloat16, s_dtype=torch.float32))
    sig = dict(fake.loads[0][0][1])
    assert (sig["x_ptr"], sig["w_ptr"], sig["s_ptr"], sig["h_ptr"], sig["y_ptr"]) == \
        ("*bf16", "*i32", "*fp32", "*fp32", "*bf16")


def test_device_changes_the_kernel(fake):
    args = _linear_args()
    _linear(args)
    fake.current["index"] = 1  # same call on GPU 1 (an sm_80 here)
    _linear(args)
    assert [(d, cap) for _, d, cap in fake.loads] == [(0, 90), (1, 80)]
    assert fake.launches[0][1] == 0 and fake.launches[1][1] == 1
    fake.current["index"] = 0
    _linear(args)
    assert len(fake.loads) == 2 and fake.launches[2][0] == fake.launches[0][0]


def test_device_index_alone_changes_the_kernel(fake):
    """Two GPUs of one architecture: one load per device (a module loaded for GPU 0
    is never launched on GPU 1)."""
    k = dequant.plan_dequantize(_dq_call(), _plan.cuda_target(90)).kernels[0]
    t = _plan.cuda_target(90)
    for idx in (0, 1, 0, 1):
        _plan.launch(k, (None,) * 4, torch.device("cuda", idx), t)
    assert [d for _, d, _ in fake.loads] == [0, 1]
    assert [f for f, *_ in fake.launches] == [1, 2, 1, 2]


def test_lowering_state_changes_the_kernel(fake):
    args = _linear_args()
    _linear(args)
    language.use_portable(True)
    try:
        _linear(args)
    finally:
        language.use_portable(None)
    _linear(args)
    assert len(fake.loads) == 2 and fake.loads[0][0] == fake.loads[1][0]  # same kernel, other state
    assert fake.launches[2][0] == fake.launches[0][0]


def test_runtime_values_share_a_kernel(fake):
    """M = 3 and M = 4: the same tile (BM = 4) and M neither 1 nor a multiple of 16,
    so one compiled kernel launched with two values of M."""
    _linear(_linear_args(M=3))
    _linear(_linear_args(M=4))
    assert len(fake.loads) == 1 and len(fake.launches) == 2
    assert fake.launches[0][3][8] == 3 and fake.launches[1][3][8] == 4  # M (after the 8 pointers)
    _linear(_linear_args(M=16))  # M % 16 == 0 is a specialisation (and another tile)
    assert len(fake.loads) == 2


def test_signed_changes_the_kernel(fake):
    args = _linear_args()
    _linear(args, signed=False)
    _linear(args, signed=True)
    assert len(fake.loads) == 2


def test_launch_args_are_the_plans(fake):
    """What the launcher gets: the tensors, then every other parameter in order
    (constexprs included, as Triton's launcher takes them), and the plan's grid."""
    x, qw, s, h = _linear_args(M=2, K=512, N=256)
    call, x2, *_ = kl._prepare(x, qw, s, h, 4, 512, 0, False)
    p = kl.plan(call, _plan.cuda_target(90))
    _linear((x, qw, s, h))
    _, _, grid, got = fake.launches[0]
    k = p.kernels[0]
    assert grid == k.grid
    assert got[0] is x2 or torch.equal(got[0], x2)
    assert got[k.n_ptrs:] == k.tail
    assert len(got) == len(k.args)


# --- the other ops -------------------------------------------------------------------------

def _dq_call(**kw):
    base = dict(container=torch.int32, nbit=4, signed=False, dtype=torch.float16, scale_dtype=torch.float16,
                shift_dtype=torch.float16, outer=64, n=256, inner=1, s_strides=(0, 0, 0), h_strides=(0, 0, 0))
    base.update(kw)
    return dequant.DequantCall(**base)


@pytest.mark.parametrize("field,a,b", [("scale_dtype", torch.float16, torch.float32),
                                       ("shift_dtype", torch.float16, torch.bfloat16),
                                       ("dtype", torch.float16, torch.bfloat16),
                                       ("container", torch.int32, torch.uint32)])
def test_dequantize_key_follows_every_dtype(field, a, b):
    t = _plan.cuda_target(90)
    ka = dequant.plan_dequantize(_dq_call(**{field: a}), t).kernels[0]
    kb = dequant.plan_dequantize(_dq_call(**{field: b}), t).kernels[0]
    assert ka.key != kb.key and ka.kid != kb.kid
    assert _plan.launch_key(ka, 0, 90, "s") != _plan.launch_key(kb, 0, 90, "s")


def test_dequantize_host_path(fake):
    x = torch.randint(0, 2 ** 31 - 1, (8, 16), dtype=torch.int32)
    for sd in (torch.float16, torch.float32, torch.float16):
        y = dequant.dequantize(x, torch.ones(8, 1, dtype=sd), torch.zeros((), dtype=sd), 4, torch.float16, 1,
                               False)
        assert y.shape == (8, 128)
    assert len(fake.loads) == 2 and len(fake.launches) == 3
    assert dict(fake.loads[0][0][1])["s_ptr"] == "*fp16" and dict(fake.loads[1][0][1])["s_ptr"] == "*fp32"


def test_dequantize_rows_host_path(fake):
    rows = torch.zeros(4, 9, dtype=torch.int32)
    dequant.dequantize_rows(rows, 4, torch.float16, 64, False)
    dequant.dequantize_rows(rows, 4, torch.bfloat16, 64, False)
    dequant.dequantize_rows(rows.view(torch.uint32), 4, torch.bfloat16, 64, False)
    sigs = [dict(k[1]) for k, _, _ in fake.loads]
    assert [(s["rows_ptr"], s["y_ptr"]) for s in sigs] == [("*i32", "*fp16"), ("*i32", "*bf16"), ("*u32", "*bf16")]


def test_embedding_bag_host_path(fake):
    rows = torch.zeros(16, 17, dtype=torch.int32)
    off = torch.tensor([0, 2], dtype=torch.int64)
    for idx_dtype, w in ((torch.int64, None), (torch.int32, None), (torch.int64, torch.ones(4)),
                         (torch.int64, torch.ones(4, dtype=torch.float16))):
        idx = torch.tensor([0, 1, 2, 3], dtype=idx_dtype)
        eb.embedding_bag(rows, idx, off, 4, "sum", w, 128, torch.float32, False, False)
    sigs = [dict(k[1]) for k, _, _ in fake.loads]
    assert len(sigs) == 4
    assert [(s["idx_ptr"], s["w_ptr"]) for s in sigs] == [("*i64", "*fp32"), ("*i32", "*fp32"), ("*i64", "*fp32"),
                                                          ("*i64", "*fp16")]
    consts = [dict(k[3]) for k, _, _ in fake.loads]
    assert [c["HAS_W"][1] for c in consts] == [False, False, True, True]


# --- the key itself ---------------------------------------------------------------------------

def test_launch_key_holds_everything():
    t = _plan.cuda_target(90)
    k = dequant.plan_dequantize(_dq_call(), t).kernels[0]
    key, dev, cap, state = _plan.launch_key(k, 3, 90, "state")
    assert (dev, cap, state) == (3, 90, "state")
    fn, sig, div, const, warps, stages = key
    assert fn is dequant._dequant_last and (warps, stages) == (k.num_warps, k.num_stages)
    assert dict(sig) == k.signature and dict(const).keys() == k.constexprs.keys()
    assert set(div) == {i for (i,) in k.attrs}
    # every constexpr, num_warps and the divisibility are part of it
    other_warps = dequant.plan_dequantize(_dq_call(num_warps=4), t).kernels[0]
    unaligned = dequant.plan_dequantize(_dq_call(aligned=(False, True, True)), t).kernels[0]
    ragged = dequant.plan_dequantize(_dq_call(n=255), t).kernels[0]  # n % 16 and another tile count
    assert len({k.key, other_warps.key, unaligned.key, ragged.key}) == 4
    assert _plan.launch_key(k, 0, 90, "a") != _plan.launch_key(k, 1, 90, "a") != _plan.launch_key(k, 1, 80, "a")
    assert _plan.launch_key(k, 0, 90, "a") != _plan.launch_key(k, 0, 90, "b")


def test_constexpr_types_are_distinguished():
    """True and 1 hash alike in Python but are different constexprs."""
    assert _plan._hashable(True) != _plan._hashable(1)
    assert _plan._hashable(tl.float16) != _plan._hashable(tl.bfloat16)


@pytest.mark.parametrize("v", [0, 1, 2, 15, 16, 48, 2 ** 31 - 1, 2 ** 31, 2 ** 32, -1, -16, -2 ** 31,
                               -2 ** 31 - 1, 2 ** 63 - 1, 2 ** 63])
def test_integer_specialisation_is_tritons(v):
    """The plan types and marks integers as Triton 3.6's own launcher does."""
    ty, attr = native_specialize_impl(CUDABackend, v, False, True, True)[:2]
    k = dequant.plan_dequantize(_dq_call(s_strides=(v, 0, 0)), _plan.cuda_target(90)).kernels[0]
    i = [n for n, _ in k.args].index("s_row")
    assert k.signature["s_row"] == ty
    if ty == "constexpr":
        assert k.constexprs["s_row"] == v
    else:
        assert ((i,) in k.attrs) == ("D" in attr)


@pytest.mark.parametrize("offset", [0, 1, 8])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.uint8, torch.int32])
def test_pointer_specialisation_is_tritons(dtype, offset):
    buf = torch.zeros(64, dtype=dtype)[offset:]
    ty, attr = native_specialize_impl(CUDABackend, buf, False, True, True)[:2]
    p = _plan.ptr(buf.dtype, buf.data_ptr() % 16 == 0)
    assert "*" + p.dtype == ty and p.aligned == ("D" in attr)


def test_unaligned_tensors_drop_divisibility(fake):
    """A view 2 bytes into a buffer: its pointer is not marked 16-divisible."""
    x, qw, s, h = _linear_args(N=128)
    s_off = torch.rand(129).half()[1:]
    _linear((x, qw, s, h))
    _linear((x, qw, s_off, h))
    assert len(fake.loads) == 2
    k0, k1 = fake.loads[0][0], fake.loads[1][0]
    assert 2 in k0[2] and 2 not in k1[2]  # s_ptr is argument 2


def test_grid_limits():
    with pytest.raises(ValueError, match="grid"):
        _plan.Kernel(dequant._dequant_rows, (1, 70000), 4, 3, rows_ptr=_plan.ptr(torch.int32),
                     y_ptr=_plan.ptr(torch.float16), n_elems=9, dim=64, BLOCK=8, PER=8, NBIT=4, WIDTH=32,
                     DST=tl.float16, SIGNED=False, IDX64=False)


def test_kernel_arguments_checked():
    with pytest.raises(TypeError, match="missing"):
        _plan.Kernel(dequant._dequant_rows, (1,), 4, 3, rows_ptr=_plan.ptr(torch.int32))


def test_embedding_bag_lookup_counts_rebind_one_kernel(fake):
    """The lookup count changes every call: one kernel per specialisation class
    (and bag-length bucket), its values rebound per call."""
    rows = torch.zeros(16, 17, dtype=torch.int32)
    off = torch.arange(8, dtype=torch.int64) * 4
    for n in (33, 34, 35, 37, 32, 48):  # mean bag length 4..6: BLOCK_L 8 (32 -> 4, 48 -> 8)
        eb.embedding_bag(rows, torch.zeros(n, dtype=torch.int64), off, 4, "sum", None, 128, torch.float32, False,
                         False)
    keys = [k for k, _, _ in fake.loads]
    # 33, 34, 35, 37: one kernel; 32 (% 16, BLOCK_L 4) and 48 (% 16, BLOCK_L 8) two more
    assert len(keys) == 3
    assert [a[3][6] for a in fake.launches] == [33, 34, 35, 37, 32, 48]  # n_idx after the 5 pointers and n_off


def test_rebind_keeps_the_class():
    k = dequant.plan_dequantize(_dq_call(), _plan.cuda_target(90)).kernels[0]  # n = 256, one tile per row
    k2 = k.rebind(n=512)  # also 16-divisible
    assert k2.key == k.key and k2.kid == k.kid and k2.grid == k.grid
    assert dict(k2.args)["n"] == 512 and k2.tail[0] == 512 and dict(k.args)["n"] == 256
    for bad in (dict(n=255), dict(tiles=2), dict(BLOCK=128), dict(x_ptr=3), dict(n=True)):
        with pytest.raises(ValueError, match="specialised"):
            k.rebind(**bad)


# --- on a GPU: the sequence of calls, checked against the reference -----------------

def _linear_ok(x, qw, s, h, group_size):
    from triton_dequant import reference as ref
    y = kl.linear(x, qw, s, h, 4, group_size, 0, False)
    w = ref.linear_weight(qw.cpu(), s.cpu(), h.cpu(), 4, dtype=x.dtype, group_size=group_size, packed_dim=0,
                          signed=False).double()
    want = x.cpu().double() @ w
    err = ((y.cpu().double() - want).norm() / want.norm()).item()
    assert err < 1e-2, err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("M", [1, 16])
def test_gpu_same_shapes_other_dtypes(M):
    """fp16 then fp32 then bf16 scales, fp16 then bf16 x, same shapes: each call is
    right (before the fix the second call reused the first call's kernel)."""
    K, N = 512, 256
    g = torch.Generator().manual_seed(0)
    qw = torch.randint(-2 ** 31, 2 ** 31 - 1, (K // 8, N), dtype=torch.int32, generator=g).cuda()
    s = (torch.rand(N, generator=g) * 0.02).cuda()
    h = (torch.randn(N, generator=g) * 0.01).cuda()
    for xd, sd in ((torch.float16, torch.float16), (torch.float16, torch.float32), (torch.float16, torch.bfloat16),
                   (torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16)):
        x = torch.randn(M, K, generator=g).to(xd).cuda()
        _linear_ok(x, qw, s.to(sd), h.to(sd), K)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_gpu_two_devices():
    K, N = 512, 256
    for dev in ("cuda:0", "cuda:1", "cuda:0"):
        g = torch.Generator().manual_seed(1)
        qw = torch.randint(-2 ** 31, 2 ** 31 - 1, (K // 8, N), dtype=torch.int32, generator=g).to(dev)
        s, h = (torch.rand(N, generator=g) * 0.02).to(dev), (torch.randn(N, generator=g) * 0.01).to(dev)
        _linear_ok(torch.randn(1, K, generator=g).half().to(dev), qw, s, h, K)


@pytest.mark.parametrize("a,b", [
    (dict(bias=True, bias_dtype="fp16"), dict(bias=True, bias_dtype="fp32")),   # bias dtype
    (dict(bias=False), dict(bias=True)),
    (dict(scale_dtype="fp16"), dict(scale_dtype="bf16")),
    (dict(dtype="fp16"), dict(dtype="bf16")),
], ids=["bias16-32", "nobias-bias", "scale16-bf16", "x16-bf16"])
@pytest.mark.parametrize("route", [dict(M=16, layout="default"), dict(M=16), dict(M=1), dict(M=256)],
                         ids=["prepacked", "mm", "gemv", "dequant"])
def test_linear_routes_key_every_dtype(route, a, b):
    """Every route of linear (GEMV, tensor cores on plain or prepacked weights, and
    the dequant + matmul route, whose kernel is the dequantize kernel) keys its
    kernel on each tensor's dtype (the dequant route's kernel does not see x or bias)."""
    from triton_dequant import inspect as tdi
    pa, _ = tdi.plan_linear(K=1024, N=1024, group_size=128, **route, **a)
    pb, _ = tdi.plan_linear(K=1024, N=1024, group_size=128, **route, **b)
    ka, kb = pa.kernels[0], pb.kernels[0]
    if pa.route == "dequant" and ("bias" in a or "dtype" in a):
        assert ka.key != kb.key if "dtype" in a else ka.key == kb.key  # W is dequantized to x.dtype
    else:
        assert ka.key != kb.key
