"""The layout step (triton_dequant.layout): kernels without tl.dequantize are
untouched, the switches work, the hook is in Triton's pipeline only while the
step is on and chains with users' hooks, the cache key follows the state.

Compiles for sm_90 on the CPU (no GPU needed); on a GPU machine one test also
runs a kernel with the step on and off and checks the results bit for bit.
"""
import re

import pytest
import torch
import triton
import triton.language as tl
from triton import knobs

import triton_dequant  # noqa: F401  (registers tl.dequantize)
from triton_dequant import language, layout, state
from triton_dequant.layout import hook, mlir
from triton_dequant.testing import as_jit, compile_for


# --- kernels -----------------------------------------------------------------------

@triton.jit
def dq_store(x_ptr, y_ptr, n, BLOCK: tl.constexpr, NBIT: tl.constexpr, PER: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    y = tl.dequantize(x, 0.5, -8.0, NBIT)
    o = tl.program_id(0) * BLOCK * PER + tl.arange(0, BLOCK * PER)
    tl.store(y_ptr + o, y, mask=o < n * PER)


@triton.jit
def add(x_ptr, y_ptr, z_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(z_ptr + offs, tl.load(x_ptr + offs, mask=m) + tl.load(y_ptr + offs, mask=m), mask=m)


@triton.jit
def matmul(a_ptr, b_ptr, c_ptr, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # (no K loop: in a process started with TRITON_INTERPRET=1, as CPU CI is,
    # Triton 3.6 cannot compile loops; the lit tests cover loops)
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a = tl.load(a_ptr + rm[:, None] * K + rk[None, :])
    b = tl.load(b_ptr + rk[:, None] * N + rn[None, :])
    tl.store(c_ptr + rm[:, None] * N + rn[None, :], tl.dot(a, b).to(tl.float16))


@triton.jit
def scale_rows(x_ptr, s_ptr, y_ptr, N, BM: tl.constexpr, BN: tl.constexpr):
    # (builtins only: in a process with TRITON_INTERPRET=1, as CPU CI is, the
    # tl.standard jit functions such as tl.sum cannot be compiled)
    rm = tl.program_id(0) * BM + tl.arange(0, BM)[:, None]
    rn = tl.arange(0, BN)[None, :]
    x = tl.load(x_ptr + rm * N + rn, mask=rn < N, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + rm)
    tl.store(y_ptr + rm * N + rn, tl.where(x > 0, x * s, 0.0).to(tl.float16), mask=rn < N)


@triton.jit
def other_asm(x_ptr, y_ptr, BLOCK: tl.constexpr):
    """The same IR shape as tl.dequantize (asm -> join -> reshape -> store, which
    stock Triton converts) but without the marker: must stay as Triton makes it."""
    x = tl.load(x_ptr + tl.arange(0, BLOCK))
    a, b, c, d = tl.inline_asm_elementwise("mov.b32 {$0, $1}, $4;\n\tmov.b32 {$2, $3}, $4;", "=h,=h,=h,=h,r", [x],
                                           dtype=(tl.float16,) * 4, is_pure=True, pack=1)
    y = tl.reshape(tl.join(tl.join(a, c), tl.join(b, d)), [4 * BLOCK])
    tl.store(y_ptr + tl.arange(0, 4 * BLOCK), y)


@triton.jit
def transpose_store(x_ptr, y_ptr, BM: tl.constexpr, BN: tl.constexpr):
    rm = tl.arange(0, BM)
    rn = tl.arange(0, BN)
    x = tl.load(x_ptr + rm[:, None] * BN + rn[None, :])
    tl.store(y_ptr + rn[None, :] * BM + rm[:, None], x)


def compile_plain():
    """A few ordinary kernels: name -> CompiledKernel."""
    return {
        "add": compile_for(add, {"x_ptr": "*fp32", "y_ptr": "*fp32", "z_ptr": "*fp32", "n": "i32"},
                           {"BLOCK": 1024}, aligned=(0, 1, 2, 3)),
        "matmul": compile_for(matmul, {"a_ptr": "*fp16", "b_ptr": "*fp16", "c_ptr": "*fp16",
                                       "M": "i32", "N": "i32", "K": "i32"},
                              {"BM": 64, "BN": 64, "BK": 32}, aligned=tuple(range(6))),
        "scale_rows": compile_for(scale_rows, {"x_ptr": "*fp16", "s_ptr": "*fp32", "y_ptr": "*fp16", "N": "i32"},
                                  {"BM": 16, "BN": 256}, num_warps=8, aligned=(0, 1, 2, 3)),
        "other_asm": compile_for(other_asm, {"x_ptr": "*i32", "y_ptr": "*fp16"}, {"BLOCK": 1024}),
        "transpose": compile_for(transpose_store, {"x_ptr": "*fp16", "y_ptr": "*fp16"}, {"BM": 64, "BN": 64}),
    }


DQ = as_jit(dq_store)  # one JIT object for every compile: its memoised cache key must follow the state


def compile_dq(block=1024, nbit=4, num_warps=4):
    return compile_for(DQ, {"x_ptr": "*i32", "y_ptr": "*fp16", "n": "i32"},
                       {"BLOCK": block, "NBIT": nbit, "PER": 32 // nbit}, num_warps=num_warps,
                       aligned=(0, 1, 2))


def converts(kernel) -> int:
    return len(re.findall(r"\bttg\.convert_layout\b", kernel.asm["ttgir"]))


def slot():
    return knobs.runtime.add_stages_inspection_hook


# --- state handling ------------------------------------------------------------------

@pytest.fixture
def clean(monkeypatch, tmp_path):
    """The step on through the environment (it is opt-in; these tests opt in), an
    empty hook slot, and a kernel cache of the test's own: some tests make a compile
    produce something else than its state says (a broken rewrite), which must not
    reach other tests. Switches, hook and slot are restored afterwards."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton-cache"))
    monkeypatch.setenv("TRITON_DEQUANT_LAYOUT", "1")
    saved = (slot(), hook._hook, hook._verified_slot, state.switches())
    knobs.runtime.add_stages_inspection_hook = None
    hook._hook = hook._verified_slot = None
    state.restore((None, None, "narrow"))  # follow the environment
    yield
    monkeypatch.undo()
    knobs.runtime.add_stages_inspection_hook, hook._hook, hook._verified_slot = saved[:3]
    state.restore(saved[3])


# --- tests -----------------------------------------------------------------------------

def test_kernels_without_dequantize_are_identical(clean, monkeypatch):
    monkeypatch.setenv("TRITON_ALWAYS_COMPILE", "1")  # their key ignores the step: compile both for real
    layout.disable()
    without = compile_plain()
    assert converts(without["other_asm"]) == 1 and converts(without["transpose"]) >= 1  # stock converts
    layout.enable()
    assert layout.is_active()
    with_step = compile_plain()
    for name, k in without.items():
        for ir in ("ttgir", "llir", "ptx"):
            assert with_step[name].asm[ir] == k.asm[ir], f"{name}: {ir} changed by the layout step"


def test_off_by_default(clean, monkeypatch):
    monkeypatch.delenv("TRITON_DEQUANT_LAYOUT")
    assert not layout.is_enabled() and not layout.is_active() and not layout.is_installed()
    assert slot() is None  # nothing in Triton's pipeline while the step is off
    assert converts(compile_dq()) == 1 and layout.cache_tag().endswith("-off")


def test_step_removes_the_conversion(clean):
    layout.disable()
    assert converts(compile_dq()) == 1  # the stock problem
    layout.enable()
    k = compile_dq()
    assert converts(k) == 0 and "local_alloc" not in k.asm["ttgir"]
    assert layout.last_report["accepted"] and layout.last_report["edits"]
    body = k.asm["ptx"].split(".entry")[1]
    # default policy "narrow": one word per thread and step, the tile born in the coalesced store layout
    assert ".shared" not in body and "st.global.v4.b32" in body and "ld.global.b32" in body
    assert "ld.global.v" not in body


def test_store_policies(clean):
    layout.set_store_policy("owned")  # 16-byte loads, each thread stores its 64-byte run (gaps)
    k = compile_dq()
    body = k.asm["ptx"].split(".entry")[1]
    assert converts(k) == 0 and ".shared" not in body
    assert "ld.global.v4.b32" in body and body.count("st.global.v4.b32") == 8
    assert layout.cache_tag().endswith("-owned") and layout.store_policy() == "owned"
    layout.set_store_policy("stock")  # keep Triton's conversion for such stores
    assert converts(compile_dq()) == 1
    layout.set_store_policy("narrow")
    narrow = compile_dq()
    assert converts(narrow) == 0 and "ld.global.v4.b32" not in narrow.asm["ptx"]
    layout.set_store_policy("owned")  # from the cache: the kernel of this policy, not the last one
    assert compile_dq().asm["ptx"] == k.asm["ptx"]
    with pytest.raises(ValueError, match="store policy"):
        layout.set_store_policy("wide")


def test_switch_off(clean, monkeypatch):
    assert converts(compile_dq()) == 0
    layout.disable()
    assert not layout.is_active() and slot() is None and converts(compile_dq()) == 1
    layout.enable()
    assert slot() is not None and converts(compile_dq()) == 0
    layout.reset()
    monkeypatch.setenv("TRITON_DEQUANT_LAYOUT", "0")
    assert not layout.is_enabled() and converts(compile_dq()) == 1
    monkeypatch.setenv("TRITON_DEQUANT_LAYOUT", "1")
    assert converts(compile_dq()) == 0  # (compile_for refreshes the state: the environment counts)
    monkeypatch.setenv("TRITON_DEQUANT_LAYOUT", "0")
    layout.enable()  # explicit call wins over the environment
    assert converts(compile_dq()) == 0
    layout.disable()
    assert slot() is None and converts(compile_dq()) == 1


def _user_hook(calls):
    def user_hook(backend, stages, options, language, capability):
        calls.append(capability)
        inner = stages["ttgir"]

        def ttgir(src, metadata):
            calls.append("ttgir")
            return inner(src, metadata)
        stages["ttgir"] = ttgir
    return user_hook


def test_chains_with_an_earlier_user_hook(clean, monkeypatch):
    monkeypatch.setenv("TRITON_ALWAYS_COMPILE", "1")  # the hooks run only when a kernel is compiled
    layout.disable()
    calls = []
    user_hook = _user_hook(calls)
    knobs.runtime.add_stages_inspection_hook = user_hook
    layout.enable()
    layout.enable()  # idempotent
    assert slot() is not user_hook and layout.is_installed()
    assert converts(compile_dq()) == 0
    assert calls == [90, "ttgir"]
    layout.disable()
    assert slot() is user_hook
    assert converts(compile_dq()) == 1 and calls[-2:] == [90, "ttgir"]


def test_chains_under_a_later_user_hook(clean, monkeypatch):
    monkeypatch.setenv("TRITON_ALWAYS_COMPILE", "1")
    calls = []
    layout.enable()
    previous = slot()

    def user_hook(backend, stages, options, language, capability):
        previous(backend, stages, options, language, capability)
        calls.append(capability)

    knobs.runtime.add_stages_inspection_hook = user_hook
    assert layout.is_installed()
    assert converts(compile_dq()) == 0 and calls == [90]
    layout.disable()  # cannot unlink from the middle of a chain: becomes a pass-through
    assert slot() is user_hook and not layout.is_installed()
    assert converts(compile_dq()) == 1 and calls == [90, 90]
    layout.enable()  # reactivated in place, not stacked twice
    assert slot() is user_hook and layout.is_installed()
    assert converts(compile_dq()) == 0 and calls == [90, 90, 90]


def test_a_user_hook_that_drops_ours(clean, monkeypatch):
    """A hook put into the slot without calling the one it replaced: the next state
    refresh (a compile_for, a launch, a query) puts the step back on top of it."""
    monkeypatch.setenv("TRITON_ALWAYS_COMPILE", "1")
    calls = []
    layout.enable()
    user_hook = _user_hook(calls)
    knobs.runtime.add_stages_inspection_hook = user_hook
    assert layout.is_active() and slot() is not user_hook
    assert converts(compile_dq()) == 0 and calls == [90, "ttgir"]
    layout.disable()
    assert slot() is user_hook


def test_cache_tag_follows_state(clean, monkeypatch):
    on = layout.cache_tag()
    assert re.fullmatch(r"layout-v\d+-[0-9a-f]{12}-narrow", on)
    key_on = language.lowering_key()
    layout.disable()
    off = layout.cache_tag()
    assert off != on and off.endswith("-off")
    assert language.lowering_key() != key_on  # the kernel cache key carries the state
    assert language.lowering_state() == state.LoweringState(portable=False, layout="off")
    layout.reset()
    monkeypatch.setenv("TRITON_DEQUANT_LAYOUT", "0")
    assert layout.cache_tag() == off
    monkeypatch.setenv("TRITON_DEQUANT_LAYOUT", "1")
    assert layout.cache_tag() == on and language.lowering_key() == key_on
    with layout.override(enabled=False):
        assert layout.cache_tag() == off
    assert layout.cache_tag() == on


def test_broken_rewrite_falls_back_to_triton(clean, monkeypatch):
    monkeypatch.setattr(layout.rewrite, "rewrite_ttgir",
                        lambda text, policy: (text.replace("tt.store", "tt.stor"), ["bogus"]))
    k = compile_dq()
    assert converts(k) == 1 and "error" in layout.last_report and not layout.last_report["accepted"]


def test_text_helpers():
    t = mlir.TensorType.parse("tensor<64x!tt.ptr<f16>, #ttg.slice<{dim = 0, parent = #blocked1}>>")
    assert t.shape == [64] and t.elem == "!tt.ptr<f16>" and t.encoding == "#ttg.slice<{dim = 0, parent = #blocked1}>"
    assert str(t.with_(elem="i1")) == "tensor<64xi1, #ttg.slice<{dim = 0, parent = #blocked1}>>"
    code, loc = mlir.split_loc('    %y = tt.foo "a(b) loc(x)" %x : i32 loc(callsite(#loc1 at #loc66))')
    assert code == '    %y = tt.foo "a(b) loc(x)" %x : i32' and loc == " loc(callsite(#loc1 at #loc66))"
    op = mlir.parse_op(0, '  %q:8 = tt.elementwise_inline_asm "%fake {" {pure = true} %w#2, %s : '
                             'tensor<4xi32, #b>, tensor<4xf16, #b> -> tensor<4xf16, #b> loc(#l)')
    assert op.results == ["%q"] and op.counts == [8] and op.operands == ["%w#2", "%s"]
    assert op.result_type.encoding == "#b"
    # sibling regions may reuse names: a use resolves to the definition in its own region
    lines = ["%c = arith.constant 1 : i32", "scf.if %p {", "  %5 = arith.addi %c, %c : i32",
             "  tt.store %a, %5 : tensor<4x!tt.ptr<i32>, #b>", "} else {", "  %5 = arith.subi %c, %c : i32",
             "  tt.store %a, %5 : tensor<4x!tt.ptr<i32>, #b>", "}"]
    body = mlir.Body(lines)
    stores = [o for o in body.ops if o.name == "tt.store"]
    assert [body.definition(s, "%5").name for s in stores] == ["arith.addi", "arith.subi"]
    assert [u.name for u in body.users(body.ops[0])] == ["arith.addi", "arith.subi"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_results_identical_on_gpu(clean):
    """The same kernel (one JIT object: its in-memory cache must follow the state)
    compiled with the step off and on writes the same bits."""
    torch.manual_seed(0)
    n, block = 1 << 16, 1024
    x = torch.randint(-2 ** 31, 2 ** 31 - 1, (n,), dtype=torch.int32, device="cuda")
    outs, cvts = [], []
    k = triton.JITFunction(as_jit(dq_store).fn)
    for on in (False, True):
        layout.enable() if on else layout.disable()
        y = torch.empty(n * 8, dtype=torch.float16, device="cuda")
        cvts.append(converts(k[(n // block,)](x, y, n, BLOCK=block, NBIT=4, PER=8)))
        outs.append(y)
    assert cvts == [1, 0]
    shifts = torch.arange(8, device="cuda", dtype=torch.int32) * 4
    ref = (((x[:, None] >> shifts) & 15).to(torch.float32) * 0.5 - 8.0).to(torch.float16).reshape(-1)
    assert torch.equal(outs[0], ref) and torch.equal(outs[1], ref)


@triton.jit
def dq_axis0(x_ptr, s_ptr, y_ptr, K, N, BK: tl.constexpr, BN: tl.constexpr, NBIT: tl.constexpr, PER: tl.constexpr):
    rk = tl.program_id(0) * BK + tl.arange(0, BK)[:, None]
    rn = tl.program_id(1) * BN + tl.arange(0, BN)[None, :]
    x = tl.load(x_ptr + rk * N + rn, mask=rn < N)
    s = tl.load(s_ptr + rn, mask=rn < N)
    y = tl.dequantize(x, s, -8.0, NBIT, axis=0)
    ro = tl.program_id(0) * BK * PER + tl.arange(0, BK * PER)[:, None]
    tl.store(y_ptr + ro * N + rn, y, mask=rn < N)


@triton.jit
def dq_per_output(x_ptr, s_ptr, y_ptr, n, BLOCK: tl.constexpr, NBIT: tl.constexpr, PER: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    o = tl.program_id(0) * BLOCK * PER + tl.arange(0, BLOCK * PER)
    s = tl.load(s_ptr + o, mask=o < n * PER)
    tl.store(y_ptr + o, tl.dequantize(x, s, 0.0, NBIT), mask=o < n * PER)


@triton.jit
def dq_gemv(x_ptr, w_ptr, y_ptr, K, N, BK: tl.constexpr, BN: tl.constexpr, NBIT: tl.constexpr, PER: tl.constexpr):
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    acc = tl.zeros([BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        rkw = k0 // PER + tl.arange(0, BK // PER)
        w = tl.load(w_ptr + rkw[:, None] * N + rn[None, :])
        q = tl.dequantize(w, 1.0, -8.0, NBIT, axis=0)
        x = tl.load(x_ptr + k0 + tl.arange(0, BK))
        acc += tl.sum(q.to(tl.float32) * x[:, None].to(tl.float32), axis=0)
    tl.store(y_ptr + rn, acc)


def _codes(x, nbit):
    width = torch.iinfo(x.dtype).bits
    shifts = torch.arange(width // nbit, device=x.device, dtype=torch.int32) * nbit
    return (x.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << nbit) - 1)  # [..., PER]


def _both(kernel, launch):
    """Run ``launch(jit_fn)`` with the step off, then on (one JIT object: its
    in-memory cache must follow the state); returns the two results."""
    outs = []
    fn = triton.JITFunction(as_jit(kernel).fn)
    for on in (False, True):
        layout.enable() if on else layout.disable()
        outs.append(launch(fn))
    return outs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("nbit,dtype", [(8, torch.int32), (4, torch.int32), (2, torch.int16)])
def test_other_consumers_identical_on_gpu(clean, nbit, dtype):
    torch.manual_seed(0)
    per = torch.iinfo(dtype).bits // nbit
    info = torch.iinfo(dtype)
    # 2-D store, unpacked along axis 0, per-column scale
    K, N, BK, BN = 64, 192, 16, 64
    x = torch.randint(info.min, info.max, (K, N), dtype=dtype, device="cuda")
    s = torch.rand(N, device="cuda").half()

    def axis0(fn):
        y = torch.empty(K * per, N, dtype=torch.float16, device="cuda")
        k = fn[(K // BK, triton.cdiv(N, BN))](x, s, y, K, N, BK=BK, BN=BN, NBIT=nbit, PER=per)
        return y, layout.conversion_summary(k.asm["ttgir"])["moving"]
    (y0, c0), (y1, c1) = _both(dq_axis0, axis0)
    q = _codes(x, nbit).permute(0, 2, 1).reshape(K * per, N)  # row i*PER + j = code j of row i
    ref = (q.double() * s.double() - 8.0).half()  # exact in float64, rounded once
    assert c1 == 0 and c0 >= 1
    assert torch.equal(y0, ref) and torch.equal(y1, ref)
    # per-output scale (a second load retargeted)
    n = 4096
    xv = torch.randint(info.min, info.max, (n,), dtype=dtype, device="cuda")
    sv = torch.rand(n * per, device="cuda").half()

    def per_out(fn):
        y = torch.empty(n * per, dtype=torch.float16, device="cuda")
        fn[(n // 1024,)](xv, sv, y, n, BLOCK=1024, NBIT=nbit, PER=per)
        return y
    y0, y1 = _both(dq_per_output, per_out)
    ref = (_codes(xv, nbit).reshape(-1).double() * sv.double()).half()
    assert torch.equal(y0, ref) and torch.equal(y1, ref)
    # GEMV-like tl.sum consumer
    Kg, Ng = 1024, 256
    w = torch.randint(info.min, info.max, (Kg // per, Ng), dtype=dtype, device="cuda")
    xa = torch.randn(Kg, device="cuda").half()

    def gemv(fn):
        y = torch.empty(Ng, dtype=torch.float32, device="cuda")
        fn[(Ng // 64,)](xa, w, y, Kg, Ng, BK=128, BN=64, NBIT=nbit, PER=per)
        return y
    y0, y1 = _both(dq_gemv, gemv)
    qw = _codes(w, nbit).permute(0, 2, 1).reshape(Kg, Ng).double() - 8.0
    ref = (xa.double()[None, :] @ qw)[0]
    torch.testing.assert_close(y0.double(), ref, rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(y1.double(), ref, rtol=1e-4, atol=1e-2)
