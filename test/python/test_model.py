"""QuantizedLinear and quantize_model (triton_dequant.model): construction from
nn.Linear / GPTQ (with act-order) / AWQ, forward against x @ W with W the module's
exact dequantized weight, state dicts (also safetensors and the meta device),
torch.compile, argument errors; the layouts (plain and prepacked tensor-core ones:
the same weight and, on the CPU, the same result bit for bit; conversions; the
"auto" rule)."""
import copy
import io
import warnings

import pytest
import torch
from torch import nn

import triton_dequant as td
from triton_dequant import QuantizedLinear, interop, layouts, packing, quantize_model
from triton_dequant import reference as ref
from triton_dequant.model import LAYOUTS, auto_layout

from conftest import DEVICE, HAS_GPU

# relative error of forward against x @ W in float64 (W = dequantized_weight(x.dtype)):
# one rounding of the fp32-accumulated result to x.dtype
TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5}
DTYPES = [torch.float16, torch.bfloat16] + ([] if HAS_GPU else [torch.float32])


def _rel(got, want):
    return ((got.double() - want).norm() / want.norm()).item()


def _check_forward(mod, x, bias=None):
    y = mod(x)
    assert y.dtype == x.dtype and y.shape == (*x.shape[:-1], mod.out_features) and y.device == x.device
    want = x.double() @ mod.dequantized_weight(x.dtype).double().T
    if bias is not None:
        want = want + bias.to(x.dtype).double()
    assert torch.isfinite(y).all()
    err = _rel(y, want)
    assert err <= TOL[x.dtype], err
    return y


def _linear(K, N, bias=True, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Linear(K, N, bias=bias).to(dtype)


SM90_4B = "mma_sm90_4b_n128k64w4"


# --- from_linear ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("nbit,group_size,signed", [(4, 128, False), (4, None, False), (8, 64, False),
                                                    (2, 32, False), (4, 128, True), (8, None, True), (1, 128, False)])
def test_from_linear(nbit, group_size, signed, dtype):
    K, N = 256, 48
    lin = _linear(K, N)
    mod = QuantizedLinear.from_linear(lin, nbit, group_size, signed).to(DEVICE)
    per = 32 // nbit
    G = 1 if group_size is None else K // group_size
    assert mod.qweight.shape == (K // per, N) and mod.qweight.dtype == torch.int32
    assert mod.scale.shape == mod.shift.shape == (G, N) and mod.scale.dtype == torch.float16
    if signed:
        assert not mod.shift.any()
    # the weight is packing.quantize's: within half a step of the original (+ fp16 rounding)
    w = mod.dequantized_weight(torch.float32).cpu()
    step = mod.scale.float().cpu().repeat_interleave(K // G, 0).T
    assert ((w - lin.weight.detach()).abs() <= step / 2 + 2e-3 * w.abs() + 1e-6).all()
    x = torch.randn(5, K, device=DEVICE).to(dtype)
    _check_forward(mod, x, lin.bias.detach().to(DEVICE))


@pytest.mark.parametrize("lead", [(), (1,), (2, 3), (0,)], ids=str)
def test_leading_shapes(lead):
    mod = QuantizedLinear.from_linear(_linear(128, 32, bias=False), 4, 128).to(DEVICE)
    x = torch.randn(*lead, 128, device=DEVICE).half()
    y = mod(x)
    assert y.shape == (*lead, 32) and y.dtype == torch.float16
    if x.numel():
        _check_forward(mod, x)


def test_dequantized_weight_is_what_forward_uses():
    """dtype matters: scale/shift are rounded to x.dtype first (bf16 here), then W once."""
    lin = _linear(128, 16, bias=False)
    mod = QuantizedLinear.from_linear(lin, 4, 32)
    w16, wbf = mod.dequantized_weight(), mod.dequantized_weight(torch.bfloat16)
    assert w16.dtype == torch.float16 and w16.shape == (16, 128)
    q = packing.unpack(mod.qweight, 4, dim=0).double()
    s, h = (t.double().repeat_interleave(32, 0) for t in (mod.scale, mod.shift))
    assert torch.equal(w16, (s * q + h).T.half())  # exact in float64, rounded once
    want_bf = ref.linear_weight(mod.qweight, mod.scale, mod.shift, 4, dtype=torch.bfloat16, group_size=32).T
    assert torch.equal(wbf, want_bf)
    x = torch.eye(128).to(torch.bfloat16)  # rows of W^T exactly
    assert torch.equal(mod(x), wbf.T)


@pytest.mark.parametrize("group_size", [64, None], ids=["g64", "per_channel"])
def test_blocked_quantize_and_dequantize(group_size, monkeypatch):
    """from_linear and dequantized_weight work in blocks (bounded memory): same results."""
    lin = _linear(512, 24, bias=False)
    mod = QuantizedLinear.from_linear(lin, 4, group_size)
    want = ref.linear_weight(mod.qweight, mod.scale, mod.shift, 4, dtype=torch.float32, group_size=mod._group).T
    monkeypatch.setattr(td.model, "_BLOCK", 24 * 64 * 2)  # dequantize: 2 groups of rows; quantize: 6 columns
    assert torch.equal(mod.dequantized_weight(torch.float32), want)
    blocked = QuantizedLinear.from_linear(lin, 4, group_size)
    for k in ("qweight", "scale", "shift"):
        assert torch.equal(getattr(blocked, k), getattr(mod, k)), k


def test_bias_dtype_kept_and_output_dtype():
    lin = _linear(128, 8, dtype=torch.float16)
    mod = QuantizedLinear.from_linear(lin, 8, 64)
    assert mod.bias.dtype == torch.float16 and mod.scale.dtype == torch.float16
    lin_bf = _linear(128, 8, dtype=torch.bfloat16)
    assert QuantizedLinear.from_linear(lin_bf).scale.dtype == torch.bfloat16
    x = torch.randn(2, 128).to(torch.bfloat16)
    assert mod(x).dtype == torch.bfloat16


def test_extra_repr():
    mod = QuantizedLinear.from_linear(_linear(256, 8), 2, None)
    assert "nbit=2" in repr(mod) and "group_size=per channel" in repr(mod) and "layout=plain" in repr(mod)
    assert "group_size=128" in repr(QuantizedLinear(256, 8))


# --- GPTQ / AWQ ----------------------------------------------------------------------------------

def _gptq_checkpoint(nbit, K, N, gs, act_order, seed=0, minus_one=True):
    """Codes, zeros, scales of a GPTQ layer and its tensors; with act_order, g_idx as
    AutoGPTQ writes it for desc_act: (i // gs) at the i-th row of the quantization order."""
    g = torch.Generator().manual_seed(seed)
    G = K // gs
    codes = torch.randint(0, 1 << nbit, (K, N), generator=g)
    zeros = torch.randint(1, 1 << nbit, (G, N), generator=g)
    scales = (torch.rand(G, N, generator=g) * 0.02 + 0.002).half()
    if act_order:
        order = torch.randperm(K, generator=g)
        g_idx = torch.empty(K, dtype=torch.int32)
        g_idx[order] = (torch.arange(K) // gs).int()
    else:
        g_idx = (torch.arange(K) // gs).int()
    qweight = packing.pack(codes, nbit, dim=0)  # GPTQ's order (test_packing checks it word by word)
    qzeros = packing.pack(zeros - int(minus_one), nbit, dim=1)
    # the checkpoint's weight as this package reads it: scale * q + round(-scale * zero)
    s, z = scales.double()[g_idx.long()], zeros.double()[g_idx.long()]
    w = s * codes + (-(s * z)).half().double()  # [K, N]
    return qweight, qzeros, scales, g_idx, w


@pytest.mark.parametrize("act_order", [False, True], ids=["plain", "act_order"])
@pytest.mark.parametrize("nbit", [2, 4, 8])
def test_from_gptq(nbit, act_order):
    K, N, gs = 256, 32, 64
    qweight, qzeros, scales, g_idx, w = _gptq_checkpoint(nbit, K, N, gs, act_order, seed=nbit)
    bias = torch.randn(N).half()
    mod = QuantizedLinear.from_gptq(qweight, qzeros, scales, g_idx, bias, bits=nbit, group_size=gs)
    assert (mod.perm is not None) == act_order and "act_order=True" in repr(mod) or not act_order
    assert torch.equal(mod.dequantized_weight(torch.float16), w.T.half())
    assert torch.equal(mod.dequantized_weight(torch.float32), w.T.float())
    if act_order:  # groups contiguous in the stored order
        assert torch.equal(g_idx[mod.perm.long()].sort().values, g_idx[mod.perm.long()])
    mod = mod.to(DEVICE)
    x = torch.randn(3, K, device=DEVICE).half()
    y = _check_forward(mod, x, bias.to(DEVICE))
    want = x.double() @ w.to(DEVICE).half().double() + bias.to(DEVICE).double()  # the checkpoint's W, K order
    assert _rel(y, want) <= TOL[torch.float16]


def test_from_gptq_v2_and_per_channel():
    K, N = 128, 16
    qweight, qzeros, scales, g_idx, w = _gptq_checkpoint(4, K, N, K, False, minus_one=False)
    mod = QuantizedLinear.from_gptq(qweight, qzeros, scales, bits=4, group_size=-1, zeros_minus_one=False)
    assert mod.group_size is None and mod.scale.shape == (1, N)
    assert torch.equal(mod.dequantized_weight(), w.T.half())


def test_interop_gptq_act_order():
    qweight, qzeros, scales, g_idx, w = _gptq_checkpoint(4, 128, 8, 32, True)
    packed, scale, shift, perm = interop.from_gptq(qweight, qzeros, scales, g_idx=g_idx, return_perm=True)
    assert perm.dtype == torch.int32 and sorted(perm.tolist()) == list(range(128))
    wp = ref.linear_weight(packed, scale, shift, 4, dtype=torch.float32, group_size=32)
    assert torch.equal(wp, w[perm.long()].float())
    x = torch.randn(2, 128).half()
    assert torch.allclose(ref.linear(x[:, perm.long()], packed, scale, shift, 4, group_size=32).double(),
                          (x.double() @ w.half().double()).half().double(), rtol=2e-3, atol=1e-3)
    assert interop.from_gptq(qweight, qzeros, scales, g_idx=(torch.arange(128) // 32), return_perm=True)[3] is None
    with pytest.raises(ValueError, match="return_perm"):
        interop.from_gptq(qweight, qzeros, scales, g_idx=g_idx)
    bad = g_idx.clone()
    bad[0] = (bad[0] + 1) % 4  # one group of 33 rows
    with pytest.raises(ValueError, match="g_idx"):
        interop.from_gptq(qweight, qzeros, scales, g_idx=bad, return_perm=True)
    with pytest.raises(ValueError, match="g_idx"):
        interop.from_gptq(qweight, qzeros, scales, g_idx=g_idx + 4, return_perm=True)
    with pytest.raises(TypeError, match="g_idx"):
        interop.from_gptq(qweight, qzeros, scales, g_idx=g_idx.float(), return_perm=True)
    with pytest.raises(ValueError, match="g_idx"):
        interop.from_gptq(qweight, qzeros, scales, g_idx=g_idx[:64], return_perm=True)


def test_from_awq():
    K, N, gs = 256, 32, 128
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 16, (K, N), generator=g)
    zeros = torch.randint(0, 16, (K // gs, N), generator=g)
    scales = (torch.rand(K // gs, N, generator=g) * 0.02 + 0.002).half()
    shift = (-(scales.double() * zeros)).half()
    # AWQ tensors from ours (test_packing checks to_awq word by word against AutoAWQ's packing)
    qweight, qzeros, _ = interop.to_awq(packing.pack(codes, 4, dim=1), scales, shift)
    mod = QuantizedLinear.from_awq(qweight, qzeros, scales, bits=4, group_size=gs)
    w = scales.double().repeat_interleave(gs, 0) * codes + shift.double().repeat_interleave(gs, 0)
    assert torch.equal(mod.dequantized_weight(), w.T.half()) and mod.bias is None
    _check_forward(mod.to(DEVICE), torch.randn(4, K, device=DEVICE).half())


# --- layouts --------------------------------------------------------------------------------------

# (nbit, group_size, signed, arch, K): N = 136 (below) and K = 160 / 192 are no multiples of the N tile
# (128) and (but int4 / int8 at 192) of the K tile (64; int2: 128); groups the K tile divides (32, 64;
# int2: half words), a multiple of it (128) and per channel
LAYOUT_CASES = [(4, 32, True, "sm80", 160), (4, 64, False, "sm90", 192), (4, 128, False, "sm90", 256),
                (4, None, False, "sm80", 160), (8, 64, False, "sm80", 192), (8, None, True, "sm90", 160),
                (2, 32, False, "sm90", 160), (2, 64, True, "sm80", 192)]


@pytest.mark.parametrize("nbit,group_size,signed,arch,K", LAYOUT_CASES, ids=str)
def test_prepacked_same_weight_and_forward(nbit, group_size, signed, arch, K, monkeypatch):
    """A prepacked layer holds the same weight as a plain one (dequantized_weight bit for
    bit, to_layout both ways exact and equal to building it so, also in blocks of N tiles)
    and computes the same: bit for bit on the CPU (both read the codes back exactly and
    accumulate alike), within the op's tolerance on a GPU."""
    N = 136
    lin = _linear(K, N, seed=nbit)
    plain = QuantizedLinear.from_linear(lin, nbit, group_size, signed, layout="plain")
    mma = QuantizedLinear.from_linear(lin, nbit, group_size, signed, layout=f"mma_{arch}")
    L = layouts.default_layout(arch, nbit)
    assert mma.layout == L.name and f"layout={L.name}" in repr(mma)
    assert mma.qweight.shape == L.shape(K, N) and mma.qweight.dtype == torch.int32
    assert mma.qconfig.tolist()[:3] == plain.qconfig.tolist()[:3] and mma.qconfig[3] == LAYOUTS[L.name].code
    assert torch.equal(layouts.unprepack(mma.qweight, L, K, N), plain.qweight)
    assert torch.equal(mma.dequantized_weight(torch.float32), plain.dequantized_weight(torch.float32))
    # conversions: exact, both ways; in blocks of one N tile the same bytes
    assert plain.to_layout("plain") is plain
    conv = copy.deepcopy(plain).to_layout(L)
    assert conv.layout == L.name and torch.equal(conv.qweight, mma.qweight) and torch.equal(conv.qconfig, mma.qconfig)
    back = conv.to_layout("plain")
    assert torch.equal(back.qweight, plain.qweight) and torch.equal(back.qconfig, plain.qconfig)
    monkeypatch.setattr(td.model, "_BLOCK", 1)
    lay = LAYOUTS[L.name]
    assert torch.equal(lay.from_plain(plain.qweight, plain.scale, plain.shift, nbit)[0], mma.qweight)
    assert torch.equal(lay.to_plain(mma.qweight, mma.scale, mma.shift, nbit, K, N)[0], plain.qweight)
    monkeypatch.undo()
    mma, plain = mma.to(DEVICE), plain.to(DEVICE)
    for i, dt in enumerate(DTYPES):
        x = torch.randn(3, K, device=DEVICE).to(dt)
        if HAS_GPU or i == 0:
            y = _check_forward(mma, x, lin.bias.detach().to(DEVICE))
        else:
            y = mma(x)
        if not HAS_GPU:
            assert torch.equal(y, plain(x)), dt


def test_bias_fused_one_rounding():
    """The bias is added to the fp32 sums (nn.Linear's addmm), not to the rounded
    product: on the CPU the result is exactly fp16(fp32(x @ W) + bias)."""
    lin = _linear(128, 64, dtype=torch.float16)
    with torch.no_grad():
        lin.bias.mul_(300)  # big enough that rounding the product first would show
    x = torch.randn(4, 128).half()
    for layout in ("plain", "mma_sm80"):
        mod = QuantizedLinear.from_linear(lin, 4, 32, layout=layout)
        w = mod.dequantized_weight(torch.float16)
        want = nn.functional.linear(x.float(), w.float(), lin.bias.detach().float()).half()
        assert torch.equal(mod(x), want), layout
    twice = (x.float() @ w.float().T).half() + lin.bias.detach()  # the product rounded, then the sum
    assert (twice != want).sum() > 8  # (so the test can fail)


def test_auto_layout_rule(monkeypatch):
    """"auto": plain on every device and arch (the H200's decode at batch 1: the
    plain layout's GEMV beat the prepacked kernel, bench/results/h200.json)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    for nbit in (1, 2, 4, 8):
        for dev in (None, "cpu", "meta", "cuda", torch.device("cuda", 0)):
            assert auto_layout(nbit, 128, dev) == "plain"
    # the default everywhere is "auto": on the CPU and the meta device that is plain
    assert QuantizedLinear(128, 8).layout == "plain" == QuantizedLinear(128, 8, device="meta").layout
    assert QuantizedLinear.from_linear(_linear(128, 8)).layout == "plain"
    assert quantize_model(nn.Linear(128, 8), 4, 64).layout == "plain"
    assert QuantizedLinear.from_linear(_linear(128, 8), layout="mma_sm80").to_layout("auto").layout == "plain"


def test_layouts_registry():
    """Every default prepacked layout has a stable code; codes are unique; names parse."""
    assert LAYOUTS["plain"].code == 0
    assert len({lay.code for lay in LAYOUTS.values()}) == len(LAYOUTS)
    for arch in layouts.ARCHS:
        for nbit in layouts.NBITS:
            name = layouts.default_layout(arch, nbit).name
            assert name in LAYOUTS, f"{name}: give it a new code in model._MMA_CODES"
            assert QuantizedLinear(256, 8, nbit=nbit, layout=f"mma_{arch}").layout == name


# --- state dicts ----------------------------------------------------------------------------------

def _model(K=256, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(K, 128), nn.ReLU(), nn.Linear(128, 64, bias=False))


def _assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].cpu().view(-1).view(torch.uint8), b[k].cpu().reshape(-1).view(torch.uint8)), k


@pytest.mark.parametrize("layout", ["plain", "mma_sm90"])
@pytest.mark.parametrize("how", ["strict", "meta_assign", "to_empty", "safetensors"])
def test_state_dict_round_trip(how, layout):
    q = quantize_model(_model(), 4, 64, layout=layout)
    sd = q.state_dict()
    x = torch.randn(3, 256).half()
    if how == "safetensors":
        from safetensors.torch import load, save
        sd = load(save(sd))
    if how in ("meta_assign", "to_empty"):
        with torch.device("meta"):
            m2 = quantize_model(_model(seed=1), 4, 64, layout=layout)
        assert m2[0].qweight.is_meta
        if how == "to_empty":
            m2 = m2.to_empty(device="cpu")
            m2.load_state_dict(sd)
        else:
            m2.load_state_dict(sd, assign=True)
    else:
        m2 = quantize_model(_model(seed=1), 4, 64, layout=layout)
        m2.load_state_dict(sd)
    _assert_same_state(m2.state_dict(), q.state_dict())
    assert m2[0].layout == q[0].layout
    assert torch.equal(m2(x), q(x))


def test_state_dict_torch_save_and_act_order_adopted():
    qweight, qzeros, scales, g_idx, w = _gptq_checkpoint(4, 128, 16, 32, True)
    a = QuantizedLinear.from_gptq(qweight, qzeros, scales, g_idx, bits=4, group_size=32)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = QuantizedLinear(128, 16, bias=False, nbit=4, group_size=32)  # no perm yet: adopted from the state dict
    b.load_state_dict(torch.load(buf))
    _assert_same_state(a.state_dict(), b.state_dict())
    assert torch.equal(b.dequantized_weight(), w.T.half())
    b.load_state_dict(QuantizedLinear.from_linear(nn.Linear(128, 16, bias=False), 4, 32).state_dict())
    assert b.perm is None  # and dropped again


@pytest.mark.parametrize("other", [dict(nbit=4, group_size=64, signed=True), dict(nbit=8, group_size=64),
                                   dict(nbit=4, group_size=None), dict(nbit=4, group_size=64, layout="mma_sm90"),
                                   dict(nbit=4, group_size=64, layout="mma_sm80", device="meta")],
                         ids=["signed", "nbit", "group", "layout", "layout_meta"])
def test_state_dict_mismatch(other):
    sd = QuantizedLinear.from_linear(nn.Linear(128, 16), 4, 64).state_dict()
    with pytest.raises((ValueError, RuntimeError), match="QuantizedLinear|size mismatch"):
        QuantizedLinear(128, 16, **other).load_state_dict(sd, assign=other.get("device") == "meta")


def test_state_dict_other_layout_names_it_and_converts():
    """A prepacked state dict refused by a plain layer (the meta model "auto" built) with
    both layouts named; loaded into its own layout and converted, it is the plain one."""
    lin = _linear(256, 160)
    sd = QuantizedLinear.from_linear(lin, 4, 64, layout="mma_sm80").state_dict()
    with torch.device("meta"):
        empty = quantize_model(nn.Sequential(nn.Linear(256, 160)), 4, 64)
    assert empty[0].layout == "plain"
    with pytest.raises(ValueError, match=r"mma_sm80_4b_n128k64w4.*plain.*to_layout"):
        empty.load_state_dict({"0." + k: v for k, v in sd.items()}, assign=True)
    m = QuantizedLinear(256, 160, nbit=4, group_size=64, layout="mma_sm80_4b_n128k64w4")
    m.load_state_dict(sd)
    want = QuantizedLinear.from_linear(lin, 4, 64).state_dict()
    got = m.to_layout("plain").state_dict()
    for k in ("qweight", "scale", "shift", "qconfig"):
        assert torch.equal(got[k], want[k]), k
    meta = QuantizedLinear(256, 160, nbit=4, group_size=64, device="meta").to_layout("mma_sm90")
    assert meta.qweight.is_meta and meta.qweight.shape == (2, 4, 1024) and meta.layout == SM90_4B


# --- quantize_model --------------------------------------------------------------------------------

class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(256, 512)
        self.odd = nn.Linear(100, 256)        # 128 does not divide 100: skipped, warned
        self.attn = nn.MultiheadAttention(256, 4, batch_first=True)  # reads out_proj.weight itself: kept
        self.blocks = nn.ModuleList([nn.Linear(512, 512, bias=False), nn.Linear(512, 256)])

    def forward(self, x, z):
        h = self.up(x) + self.up(self.odd(z))
        h = self.blocks[1](torch.relu(self.blocks[0](torch.relu(h))))
        return self.attn(h, h, h, need_weights=False)[0]


def test_quantize_model():
    net = _Net()
    with pytest.warns(UserWarning, match=r"odd \(") as rec:
        out = quantize_model(net, 4, 128)
    assert out is net and len(rec) == 1
    assert isinstance(net.up, QuantizedLinear) and all(isinstance(b, QuantizedLinear) for b in net.blocks)
    assert type(net.odd) is nn.Linear and type(net.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    net2 = _Net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_model(net2, 8, None, filter_fn=lambda name, m: name.startswith("blocks"))
    assert type(net2.up) is nn.Linear and net2.blocks[0].nbit == 8 and net2.blocks[0].group_size is None
    root = quantize_model(nn.Linear(128, 8), 2, 64)
    assert isinstance(root, QuantizedLinear) and root.nbit == 2
    # a prepacked layout: checked for every layer before any is replaced
    # (layer 0: one group of 16 = per channel, fine; layer 1: int2 groups of 16 are less than half a word)
    net3 = nn.Sequential(nn.Linear(16, 64), nn.Linear(64, 8))
    with pytest.raises(ValueError, match=r"layer 1: `group_size`.*16"):
        quantize_model(net3, 2, 16, layout="mma_sm90")
    assert all(type(m) is nn.Linear for m in net3)
    net3 = nn.Sequential(nn.Linear(192, 64), nn.Linear(64, 8))
    quantize_model(net3, 4, 64, layout="mma_sm80")
    assert [m.layout for m in net3] == ["mma_sm80_4b_n128k64w4"] * 2


@pytest.mark.skipif(HAS_GPU, reason="fp32 activations are CPU-only (the GPU is covered by test_llama)")
def test_quantize_model_forward_matches_dequantized():
    net = _Net().eval()
    x, z = torch.randn(2, 3, 256), torch.randn(2, 3, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_model(net, 4, 64)
    ref_net = _Net().eval()
    ref_net.load_state_dict({k: v for k, v in net.state_dict().items() if not k.split(".")[-1] in
                             ("qweight", "scale", "shift", "qconfig")}, strict=False)
    for name, m in net.named_modules():
        if isinstance(m, QuantizedLinear):
            ref_net.get_submodule(name).weight.data = m.dequantized_weight(torch.float32)
    assert _rel(net(x, z), ref_net(x, z).double()) <= 1e-5


# --- torch.compile ---------------------------------------------------------------------------------

@pytest.mark.skipif(HAS_GPU, reason="CPU compile test (the GPU path is exercised by the CUDA-graph checks)")
def test_torch_compile_fullgraph():
    """Plain and prepacked layers (act-order, per group, per channel, bias) in one graph."""
    qweight, qzeros, scales, g_idx, _ = _gptq_checkpoint(4, 128, 256, 32, True)
    net = nn.Sequential(QuantizedLinear.from_gptq(qweight, qzeros, scales, g_idx, bits=4, group_size=32,
                                                  layout="mma_sm90"),
                        nn.SiLU(), QuantizedLinear.from_linear(_linear(256, 192), 8, 128),
                        nn.SiLU(), QuantizedLinear.from_linear(_linear(192, 64, seed=1), 2, None, layout="mma_sm80"))
    assert [m.layout for m in net if isinstance(m, QuantizedLinear)] == \
        [SM90_4B, "plain", "mma_sm80_2b_n128k128w4"]
    x = torch.randn(4, 128).half()
    eager = net(x)
    torch._dynamo.reset()
    compiled = torch.compile(net, fullgraph=True)
    got = compiled(x)
    # inductor fuses SiLU and the bias add (fp32 inside, one rounding): fp16 ulps apart from eager
    assert got.dtype == eager.dtype and _rel(got, eager.double()) <= TOL[torch.float16]


@pytest.mark.skipif(not HAS_GPU, reason="host syncs and CUDA-graph capture: GPU only")
@pytest.mark.parametrize("layout", ["plain", "auto"])  # "auto" on the GPU: the prepacked layout from sm_80 on
@pytest.mark.parametrize("M", [1, 16])  # plain: the GEMV and the tensor-core kernel (split-K workspaces)
def test_cuda_no_sync_and_graph_capture(M, layout):
    qweight, qzeros, scales, g_idx, _ = _gptq_checkpoint(4, 256, 128, 64, True)
    mod = QuantizedLinear.from_gptq(qweight, qzeros, scales, g_idx, torch.randn(128).half(), bits=4,
                                    group_size=64).cuda().to_layout(layout)
    assert mod.layout == auto_layout(4, 64, "cuda") or layout == "plain"
    x = torch.randn(M, 256, device="cuda").half()
    mod(x)  # warm-up: kernel compilation, persistent workspaces
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mod(x)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        mod(static_x)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_y = mod(static_x)
    for _ in range(2):  # replays see new inputs
        x2 = torch.randn_like(x)
        static_x.copy_(x2)
        g.replay()
        torch.cuda.synchronize()
        assert _rel(static_y, mod(x2).double()) <= 1e-3


# --- errors -----------------------------------------------------------------------------------------

_Q = _gptq_checkpoint(4, 128, 8, 32, False)


@pytest.mark.parametrize("fn,exc,match", [
    (lambda: QuantizedLinear(128, 8, nbit=3), ValueError, "nbit"),
    (lambda: QuantizedLinear(128, 8, nbit=4, group_size=100), ValueError, "group_size"),
    (lambda: QuantizedLinear(128, 8, nbit=2, group_size=8), ValueError, "multiple of 16"),
    (lambda: QuantizedLinear(100, 8, nbit=4, group_size=None), ValueError, "in_features"),
    (lambda: QuantizedLinear(128, 8, layout="mma_sm75"), ValueError, "layout"),
    (lambda: QuantizedLinear(128, 8, layout=3), ValueError, "layout"),
    (lambda: QuantizedLinear(128, 8, layout="mma_sm90_4b_n64k64w4"), ValueError, "layout"),  # no code: not stored
    (lambda: QuantizedLinear(128, 8, nbit=8, layout=SM90_4B), ValueError, "`layout`.*4-bit codes"),
    (lambda: QuantizedLinear(128, 8, nbit=1, layout="mma_sm90"), ValueError, "`layout`.*1-bit"),
    (lambda: QuantizedLinear(128, 8, nbit=1, layout="mma_sm80_2b_n128k128w4"), ValueError, "`layout`.*1-bit"),
    (lambda: QuantizedLinear(192, 8, nbit=4, group_size=96, layout="mma_sm90"), ValueError, "`group_size`.*K tile"),
    (lambda: QuantizedLinear(128, 8, nbit=4, group_size=8, layout="mma_sm90"), ValueError, "`group_size`"),
    (lambda: QuantizedLinear.from_linear(_linear(128, 8), 2, 16, layout="mma_sm80"), ValueError, "`group_size`"),
    (lambda: QuantizedLinear.from_gptq(*_Q[:3], bits=4, group_size=32, layout="nope"), ValueError, "layout"),
    (lambda: QuantizedLinear(128, 8).to_layout("mma_sm75"), ValueError, "layout"),
    (lambda: QuantizedLinear(128, 8, nbit=1).to_layout("mma_sm90"), ValueError, "1-bit"),
    (lambda: quantize_model(nn.Linear(128, 8), layout="tc"), ValueError, "layout"),
    (lambda: quantize_model(nn.Linear(128, 8), nbit=1, layout="mma_sm90"), ValueError, "1-bit"),
    (lambda: QuantizedLinear(128, 8, scale_dtype=torch.int8), TypeError, "scale_dtype"),
    (lambda: QuantizedLinear(128, 8, nbit=1, signed=True), ValueError, "signed"),
    (lambda: QuantizedLinear.from_linear(nn.Conv1d(1, 1, 1)), TypeError, "linear"),
    (lambda: QuantizedLinear.from_gptq(*_Q[:3], bits=3, group_size=32), ValueError, "3-bit GPTQ"),
    (lambda: QuantizedLinear.from_gptq(*_Q[:3], bits=4, group_size=64), ValueError, "group_size"),
    (lambda: QuantizedLinear.from_gptq(*_Q[:3], bits=4, group_size=-1), ValueError, "per channel"),
    (lambda: QuantizedLinear.from_awq(*_Q[:3], bits=8, group_size=32), ValueError, "bits"),
    (lambda: quantize_model(nn.Linear(128, 8), nbit=5), ValueError, "nbit"),
    (lambda: quantize_model(nn.Linear(128, 8), filter_fn=3), TypeError, "filter_fn"),
    (lambda: QuantizedLinear(128, 8)(torch.randn(2, 64).half()), ValueError, "last dimension"),
    (lambda: QuantizedLinear(128, 8)(torch.randint(0, 2, (2, 128))), TypeError, "`x`"),
])
def test_errors(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


def test_exports():
    assert td.QuantizedLinear is QuantizedLinear and td.quantize_model is quantize_model
    assert td.model.LAYOUTS is LAYOUTS and td.model.auto_layout is auto_layout
