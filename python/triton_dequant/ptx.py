"""PTX sequences that turn packed nbit codes into floats, and an emulator for them.

One inline-asm call handles one container element (``pack=1``) and returns its
``PER = width // nbit`` values, code ``j`` -> output ``$j``. No integer-to-float
``cvt`` is used; floats are built by placing the code under a magic exponent.

16-bit outputs (fp16, bf16), one pair of neighbouring codes ``(j, j+1)`` per
32-bit register, so the pair is already in store order:

1. ``prmt``  - copy the byte holding code ``j`` to byte 0 and the byte holding
   code ``j+1`` to byte 2 (from the element or from a copy shifted by nbit).
2. ``lop3``  - ``(t & mask) ^ K`` keeps the two codes at bit offsets ``a``/``b``
   of their halves and ORs in the magic exponent ``K`` (XOR also flips the sign
   bit of signed codes, which is free because ``K`` is zero under ``mask``).
3. ``fma``   - ``t * 2**-a - (MAGIC * 2**-a + bias)`` gives the exact code as a
   float: every step is exact, so it is one rounding of an exact integer.
4. ``fma``   - ``q * scale + shift``: the only rounding, once, as the contract says.

fp32 outputs use the same steps per value with the fp32 magic ``2**23``.
8-bit codes skip the ``lop3`` where ``prmt`` can insert the magic byte itself.

Magic numbers (the same tricks as FBGEMM's dequant helpers, CUTLASS
``numeric_conversion.h`` / FasterTransformer's interleaved converters, and
Marlin's dequant; constants derived here from the float formats):

* fp16 ``0x6400`` = 1024.0: exponent 2**10 with 10 mantissa bits, so the
  mantissa bits are the integer part: ``bits(0x6400 | q) == 1024 + q`` for ``q < 1024``.
* bf16 ``0x4300`` = 128.0: 7 mantissa bits, ``bits(0x4300 | q) == 128 + q`` for ``q < 128``.
* fp32 ``0x4B000000`` = 2**23: 23 mantissa bits, ``== 2**23 + q`` for ``q < 2**23``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from . import reference as ref

# magic exponent patterns (see module docstring), per output format
MAGIC16 = {"fp16": 0x6400, "bf16": 0x4300}
MAGIC_VALUE16 = {"fp16": 1024.0, "bf16": 128.0}
MANTISSA16 = {"fp16": 10, "bf16": 7}
MAGIC32 = 0x4B000000  # 2**23 as fp32
MAGIC32_VALUE = float(2 ** 23)
# prmt's second operand when it builds the float itself from a byte:
# fp16: bytes 0x64 above each code byte -> 0x64bb = 1024 + b.
PRMT_MAGIC_FP16 = 0x64646464
# lop3 truth tables (a = first, b = second, c = third operand):
LOP3_AND_XOR = 0x6A  # (a & b) ^ c  = (0xF0 & 0xCC) ^ 0xAA
SCALE_ONE = "one"     # scale == 1 and shift == 0: no affine fma at all
DST_TYPES = ("fp16", "bf16", "fp32")
WIDTHS = (8, 16, 32)
NBITS = (1, 2, 4, 8)


@dataclass(frozen=True)
class Variant:
    """What one asm call computes.

    nbit, width: code and container widths; dst: 'fp16' | 'bf16' | 'fp32'.
    scale / shift: ``None`` -> an asm operand (register), an int -> the value's
    bit pattern in ``dst`` baked in as an immediate. ``affine=False`` returns
    the exact codes (scale 1, shift 0) and ignores scale/shift.
    """
    nbit: int
    width: int
    dst: str
    signed: bool = False
    affine: bool = True
    scale: Optional[int] = None
    shift: Optional[int] = None

    @property
    def per(self) -> int:
        return self.width // self.nbit

    @property
    def out_bits(self) -> int:
        return 32 if self.dst == "fp32" else 16

    @property
    def scale_operand(self) -> bool:
        return self.affine and self.scale is None

    @property
    def shift_operand(self) -> bool:
        return self.affine and self.shift is None


@dataclass
class Program:
    variant: Variant
    instrs: list          # (opcode, dst(s), *operands)
    outputs: list         # register names, one per output value
    inputs: list          # ('x', 's', 'h') operand names in order

    @property
    def constraints(self) -> str:
        v = self.variant
        o = "=r" if v.out_bits == 32 else "=h"
        x = "r" if v.width == 32 else "h"
        f = "r" if v.out_bits == 32 else "h"
        ins = [x] + [f for name in self.inputs[1:]]
        return ",".join([o] * len(self.outputs) + ins)

    def count(self) -> dict:
        """Instructions by opcode (register moves excluded: they cost nothing)."""
        c: dict = {}
        for ins in self.instrs:
            if ins[0] in ("pack", "unpack", "widen", "movi"):
                continue
            c[ins[0]] = c.get(ins[0], 0) + 1
        return c


class _Builder:
    def __init__(self, variant: Variant):
        self.v = variant
        self.instrs: list = []
        self.n = 0
        self.consts: dict = {}

    def reg(self) -> str:
        self.n += 1
        return f"r{self.n}"

    def emit(self, *ins) -> str:
        self.instrs.append(ins)
        return ins[1]

    def const(self, value: int) -> str:
        value &= 0xFFFFFFFF
        if value not in self.consts:
            self.consts[value] = self.emit("movi", self.reg(), value)
        return self.consts[value]


def _f16x2(fmt: str, lo: float, hi: float) -> int:
    f = ref.float_format(fmt)
    vals = torch.tensor([lo, hi], dtype=torch.float64)
    assert torch.equal(ref.round_to(vals, f), vals), (fmt, lo, hi)  # must be exact
    b = ref.to_bits(vals, f)
    return int(b[0]) | int(b[1]) << 16


def _f32(x: float) -> int:
    vals = torch.tensor([x], dtype=torch.float64)
    assert torch.equal(ref.round_to(vals, ref.FP32), vals), x
    return int(ref.to_bits(vals, ref.FP32)[0]) & 0xFFFFFFFF


def build(v: Variant) -> Program:
    """The instruction list for one variant (see the module docstring)."""
    if v.nbit not in NBITS or v.width not in WIDTHS or v.width % v.nbit or v.dst not in DST_TYPES:
        raise ValueError(f"unsupported variant {v}")
    b = _Builder(v)
    inputs = ["x"]
    if v.scale_operand:
        inputs.append("s")
    if v.shift_operand:
        inputs.append("h")
    # the element as a 32-bit register; narrow containers arrive in a 16-bit
    # register whose bits above `width` are unspecified (never selected below)
    r = "x" if v.width == 32 else b.emit("widen", b.reg(), "x")
    bias = (1 << (v.nbit - 1)) if v.signed else 0  # signed code = (code ^ bias) - bias
    if v.dst == "fp32":
        outputs = _build_fp32(b, r, bias)
    elif v.nbit == 8 and v.dst == "bf16":
        outputs = _build_bf16_8bit(b, r, bias)
    else:
        outputs = _build_16(b, r, bias)
    return Program(v, b.instrs, outputs, inputs)


def _sign_flip_word(v: Variant) -> int:
    """Word with the top bit of every code set (the XOR that makes a signed code unsigned)."""
    w = 0
    for j in range(v.per):
        w |= 1 << (j * v.nbit + v.nbit - 1)
    return w


def _affine16(b: _Builder, q: str) -> str:
    v = b.v
    if not v.affine:
        return q
    op = "fma.rn.f16x2" if v.dst == "fp16" else "fma.rn.bf16x2"
    s = b.const(v.scale * 0x10001) if v.scale is not None else b.scale2
    h = b.const(v.shift * 0x10001) if v.shift is not None else b.shift2
    return b.emit(op, b.reg(), q, s, h)


def _setup_affine16(b: _Builder) -> None:
    v = b.v
    if v.scale_operand:
        b.scale2 = b.emit("pack", b.reg(), "s", "s")
    if v.shift_operand:
        b.shift2 = b.emit("pack", b.reg(), "h", "h")


def _pairs(b: _Builder, regs: list) -> list:
    """Split each pair register into two 16-bit outputs (free: register halves)."""
    outs = []
    v = b.v
    for k, t in enumerate(regs):
        lo = f"o{2 * k}"
        hi = f"o{2 * k + 1}" if 2 * k + 1 < v.per else "junk"
        b.emit("unpack", (lo, hi), t)
        outs.append(lo)
        if hi != "junk":
            outs.append(hi)
    return outs


def _build_16(b: _Builder, r: str, bias: int) -> list:
    """fp16 / bf16 outputs, a register per neighbouring code pair."""
    v = b.v
    mant = MANTISSA16[v.dst]
    magic, magic_val = MAGIC16[v.dst], MAGIC_VALUE16[v.dst]
    op = "fma.rn.f16x2" if v.dst == "fp16" else "fma.rn.bf16x2"
    _setup_affine16(b, )
    mask_code = (1 << v.nbit) - 1
    # 8-bit codes into fp16: prmt inserts the 0x64 exponent byte itself, no lop3.
    byte_magic = v.nbit == 8 and v.dst == "fp16"
    if byte_magic:
        if v.signed:
            r = b.emit("xor", b.reg(), r, _sign_flip_word(v) if v.width == 32 else 0x80808080)
        m = b.const(PRMT_MAGIC_FP16)
    shifted = None  # r >> nbit, for codes too high in their byte for bf16's 7-bit mantissa
    regs = []
    for j in range(0, v.per, 2):
        halves = []
        for code in (j, min(j + 1, v.per - 1)):
            p = code * v.nbit
            src, pos = 0, p
            if (p % 8) + v.nbit > mant:  # bf16 only: code would reach the exponent
                if shifted is None:
                    shifted = b.emit("shr", b.reg(), r, v.nbit)
                src, pos = 1, p - v.nbit
            halves.append((src, pos // 8, pos % 8))
        if byte_magic:
            # d.b0 = code byte, d.b1 = 0x64, d.b2 = code byte, d.b3 = 0x64 (b operand bytes 4..7)
            sel = halves[0][1] | 4 << 4 | halves[1][1] << 8 | 5 << 12
            t = b.emit("prmt", b.reg(), r, m, sel)
            offs = (0, 0)
        else:
            sel = (halves[0][0] * 4 + halves[0][1]) | (halves[1][0] * 4 + halves[1][1]) << 8
            t = b.emit("prmt", b.reg(), r, shifted if shifted is not None else r, sel)
            offs = (halves[0][2], halves[1][2])
            mask = (mask_code << offs[0]) | (mask_code << (16 + offs[1]))
            k = magic * 0x10001
            if v.signed:
                k |= (1 << (offs[0] + v.nbit - 1)) | (1 << (16 + offs[1] + v.nbit - 1))
            t = b.emit("lop3", b.reg(), t, b.const(mask), b.const(k), LOP3_AND_XOR)
        # exact code: t * 2**-a - (MAGIC * 2**-a + bias)
        c1 = _f16x2(v.dst, 2.0 ** -offs[0], 2.0 ** -offs[1])
        c0 = _f16x2(v.dst, -(magic_val * 2.0 ** -offs[0] + bias), -(magic_val * 2.0 ** -offs[1] + bias))
        q = b.emit(op, b.reg(), t, b.const(c1), b.const(c0))
        regs.append(_affine16(b, q))
    return _pairs(b, regs)


def _build_bf16_8bit(b: _Builder, r: str, bias: int) -> list:
    """8-bit codes into bf16: 255 needs 8 significant bits, bf16 has 8 but its
    magic trick only 7, so build exact fp32 codes and pack them with
    ``cvt.rn.bf16x2.f32`` (float-to-float, exact for integers <= 256)."""
    v = b.v
    _setup_affine16(b)
    if v.signed:
        r = b.emit("xor", b.reg(), r, 0x80808080)
    m = b.const(MAGIC32)
    c1 = b.const(_f32(1.0))
    c0 = b.const(_f32(-(MAGIC32_VALUE + bias)))
    regs = []
    for j in range(0, v.per, 2):
        qs = []
        for code in (j, min(j + 1, v.per - 1)):
            # d.b0 = code byte, d.b1 = d.b2 = 0x00, d.b3 = 0x4B (bytes 4..7 of m = 00 00 00 4B)
            t = b.emit("prmt", b.reg(), r, m, code | 4 << 4 | 5 << 8 | 7 << 12)
            qs.append(b.emit("fma.rn.f32", b.reg(), t, c1, c0))
        q = b.emit("cvt.rn.bf16x2.f32", b.reg(), qs[1], qs[0])  # a -> high half, b -> low half
        regs.append(_affine16(b, q))
    return _pairs(b, regs)


def _build_fp32(b: _Builder, r: str, bias: int) -> list:
    v = b.v
    mask_code = (1 << v.nbit) - 1
    if v.affine:
        s = b.const(v.scale) if v.scale is not None else "s"
        h = b.const(v.shift) if v.shift is not None else "h"
    if v.nbit == 8:
        if v.signed:
            r = b.emit("xor", b.reg(), r, 0x80808080)
        m = b.const(MAGIC32)
    high = None
    outs = []
    for j in range(v.per):
        p = j * v.nbit
        if v.nbit == 8:
            t = b.emit("prmt", b.reg(), r, m, j | 4 << 4 | 5 << 8 | 7 << 12)
            a = 0
        else:
            src, a = r, p
            if p + v.nbit > 23:  # would reach the exponent: take it from r >> 16
                if high is None:
                    high = b.emit("shr", b.reg(), r, 16)
                src, a = high, p - 16
            k = MAGIC32 | ((1 << (a + v.nbit - 1)) if v.signed else 0)
            t = b.emit("lop3", b.reg(), src, b.const(mask_code << a), b.const(k), LOP3_AND_XOR)
        q = b.emit("fma.rn.f32", b.reg(), t, b.const(_f32(2.0 ** -a)),
                   b.const(_f32(-(MAGIC32_VALUE * 2.0 ** -a + bias))))
        if v.affine:
            q = b.emit("fma.rn.f32", b.reg(), q, s, h)
        o = f"o{j}"
        b.emit("unpack", (o,), q)
        outs.append(o)
    return outs


# --- rendering -----------------------------------------------------------------

MARKER = "// triton_dequant"


def render(prog: Program, tag: str = "") -> str:
    """PTX text for ``tl.inline_asm_elementwise`` (outputs ``$0..``, then inputs).

    The first line is the marker comment the layout pass looks for."""
    names = {o: f"${i}" for i, o in enumerate(prog.outputs)}
    for i, name in enumerate(prog.inputs):
        names[name] = f"${len(prog.outputs) + i}"
    regs = sorted({x for ins in prog.instrs for x in _dsts(ins) if x not in names and x != "junk"},
                  key=lambda r: int(r[1:]))

    def n(x):
        return names.get(x, x) if isinstance(x, str) else f"0x{x:08x}"

    v = prog.variant
    lines = [f"{MARKER} nbit={v.nbit} width={v.width} dst={v.dst} signed={int(v.signed)} {tag}".rstrip(), "{"]
    if regs:
        lines.append(f".reg .b32 {', '.join(regs)};")
    if any("junk" in _dsts(ins) for ins in prog.instrs):
        lines.append(".reg .b16 junk;")
    for ins in prog.instrs:
        op = ins[0]
        if op == "movi":
            lines.append(f"mov.b32 {n(ins[1])}, {n(ins[2])};")
        elif op == "widen":
            lines.append(f"mov.b32 {n(ins[1])}, {{{n(ins[2])}, {n(ins[2])}}};")
        elif op == "pack":
            lines.append(f"mov.b32 {n(ins[1])}, {{{n(ins[2])}, {n(ins[3])}}};")
        elif op == "unpack":
            if len(ins[1]) == 2:
                lines.append(f"mov.b32 {{{n(ins[1][0])}, {n(ins[1][1])}}}, {n(ins[2])};")
            else:
                lines.append(f"mov.b32 {n(ins[1][0])}, {n(ins[2])};")
        elif op == "shr":
            lines.append(f"shr.u32 {n(ins[1])}, {n(ins[2])}, {ins[3]};")
        elif op == "xor":
            lines.append(f"xor.b32 {n(ins[1])}, {n(ins[2])}, {n(ins[3])};")
        elif op == "prmt":
            lines.append(f"prmt.b32 {n(ins[1])}, {n(ins[2])}, {n(ins[3])}, 0x{ins[4]:04x};")
        elif op == "lop3":
            lines.append(f"lop3.b32 {n(ins[1])}, {n(ins[2])}, {n(ins[3])}, {n(ins[4])}, 0x{ins[5]:02x};")
        elif op.startswith("fma.") or op.startswith("cvt."):
            lines.append(f"{op} {', '.join(n(x) for x in ins[1:])};")
        else:  # pragma: no cover
            raise AssertionError(op)
    lines.append("}")
    return "\n".join(lines)


def _dsts(ins) -> tuple:
    if ins[0] == "unpack":
        return tuple(ins[1])
    return (ins[1],)


def lowering_hash() -> str:
    """Hash of the code that generates the asm (part of Triton's kernel cache key)."""
    with open(__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


# --- emulator --------------------------------------------------------------------

_M32 = 0xFFFFFFFF


def _lop3(a, b, c, lut):
    out = torch.zeros_like(a)
    for i in range(8):
        if lut >> i & 1:
            out |= (a if i & 4 else ~a) & (b if i & 2 else ~b) & (c if i & 1 else ~c)
    return out & _M32


def _prmt(a, b, sel):
    out = torch.zeros_like(a)
    for k in range(4):
        s = (sel >> (4 * k)) & 0xF
        assert s < 8, "sign-replicate mode is not used"
        src = a if s < 4 else b
        out |= ((src >> (8 * (s & 3))) & 0xFF) << (8 * k)
    return out


def _fma_bits(a, b, c, fmt, lanes):
    out = torch.zeros_like(a)
    bits = fmt.bits
    for lane in range(lanes):
        sh = lane * bits
        f = [ref.from_bits((t >> sh) & ((1 << bits) - 1), fmt) for t in (a, b, c)]
        r = ref.fma(f[0], f[1], f[2], fmt)
        out |= (ref.to_bits(r, fmt).to(torch.int64) & ((1 << bits) - 1)) << sh
    return out


def _cvt_bf16x2_f32(a, b):
    hi = ref.round_to(ref.from_bits(a, ref.FP32), ref.BF16)
    lo = ref.round_to(ref.from_bits(b, ref.FP32), ref.BF16)
    return (ref.to_bits(hi, ref.BF16).to(torch.int64) << 16) | ref.to_bits(lo, ref.BF16).to(torch.int64)


def emulate(prog: Program, x: torch.Tensor, scale: Optional[torch.Tensor] = None,
            shift: Optional[torch.Tensor] = None, junk: Optional[torch.Tensor] = None) -> list:
    """Execute the program on int64 tensors of element bit patterns.

    ``x`` holds container elements (low ``width`` bits used); ``junk`` fills the
    unspecified register bits above a narrow container. ``scale``/``shift`` are
    bit patterns of the operand values. Returns one int64 tensor of output bit
    patterns per output, in output order."""
    v = prog.variant
    x = x.to(torch.int64) & ((1 << v.width) - 1)
    if v.width < 16:
        x = x | ((junk.to(torch.int64) & 0xFF) << 8 if junk is not None else 0)
    regs = {"x": x}
    if "s" in prog.inputs:
        regs["s"] = scale.to(torch.int64).expand_as(x)
    if "h" in prog.inputs:
        regs["h"] = shift.to(torch.int64).expand_as(x)
    half = (1 << 16) - 1
    for ins in prog.instrs:
        op = ins[0]
        g = lambda k: regs[ins[k]] if isinstance(ins[k], str) else torch.full_like(x, ins[k])
        if op == "movi":
            regs[ins[1]] = torch.full_like(x, ins[2])
        elif op == "widen":
            regs[ins[1]] = (g(2) & half) | ((g(2) & half) << 16)
        elif op == "pack":
            regs[ins[1]] = (g(2) & half) | ((g(3) & half) << 16)
        elif op == "unpack":
            t = g(2)
            if len(ins[1]) == 2:
                regs[ins[1][0]], regs[ins[1][1]] = t & half, (t >> 16) & half
            else:
                regs[ins[1][0]] = t & _M32
        elif op == "shr":
            regs[ins[1]] = (g(2) & _M32) >> ins[3]
        elif op == "xor":
            regs[ins[1]] = (g(2) ^ g(3)) & _M32
        elif op == "prmt":
            regs[ins[1]] = _prmt(g(2), g(3), ins[4])
        elif op == "lop3":
            regs[ins[1]] = _lop3(g(2), g(3), g(4), ins[5])
        elif op == "fma.rn.f16x2":
            regs[ins[1]] = _fma_bits(g(2), g(3), g(4), ref.FP16, 2)
        elif op == "fma.rn.bf16x2":
            regs[ins[1]] = _fma_bits(g(2), g(3), g(4), ref.BF16, 2)
        elif op == "fma.rn.f32":
            regs[ins[1]] = _fma_bits(g(2), g(3), g(4), ref.FP32, 1)
        elif op == "cvt.rn.bf16x2.f32":
            regs[ins[1]] = _cvt_bf16x2_f32(g(2), g(3))
        else:  # pragma: no cover
            raise AssertionError(op)
    return [regs[o] for o in prog.outputs]


# --- parsing rendered PTX back (to emulate exactly what was emitted) ------------------

def from_compiled(block: str, variant: Variant) -> Program:
    """Parse an asm block as it appears in compiled PTX, where LLVM replaced the
    ``$k`` operands by its own registers: those are mapped back by position
    against the rendered template; everything else (constants, selectors,
    opcodes) is taken from the compiled text."""
    import re
    tok = re.compile(r"[^\s,{};]+")
    template = render(build(variant))
    got, want = tok.findall(block), tok.findall(template)
    if len(got) != len(want):
        raise ValueError("compiled asm block does not have the template's shape")
    pieces, pos = [], 0
    for m, t in zip(tok.finditer(block), want):
        pieces.append(block[pos:m.start()])
        pieces.append(t if t.startswith("$") else m.group(0))
        pos = m.end()
    pieces.append(block[pos:])
    return parse("".join(pieces), variant)


def parse(asm: str, variant: Variant) -> Program:
    """Rebuild a Program from rendered PTX text, so tests can emulate the exact
    string that went into the kernel (and catch a corrupted constant/selector)."""
    import re
    lines = [l.strip() for l in asm.splitlines()]
    body = [l for l in lines if l and not l.startswith("//") and l not in "{}" and not l.startswith(".reg")]
    n_out = variant.per
    n_in = 1 + (variant.scale_operand) + (variant.shift_operand)
    inputs = ["x"] + (["s"] if variant.scale_operand else []) + (["h"] if variant.shift_operand else [])
    outs = [f"o{i}" for i in range(n_out)]
    names = {f"${i}": o for i, o in enumerate(outs)}
    names.update({f"${n_out + i}": name for i, name in enumerate(inputs)})
    assert len(names) == n_out + n_in

    def val(tok):
        tok = tok.strip()
        if tok in names:
            return names[tok]
        if tok.startswith("0x"):
            return int(tok, 16)
        if tok.isdigit():
            return int(tok)
        return tok

    instrs = []
    for l in body:
        m = re.fullmatch(r"(\S+)\s+(.*);", l)
        op, rest = m.group(1), m.group(2)
        if op == "mov.b32":
            if rest.startswith("{"):
                lhs, rhs = re.fullmatch(r"\{(.*)\},\s*(\S+)", rest).groups()
                instrs.append(("unpack", tuple(val(t) for t in lhs.split(",")), val(rhs)))
                continue
            d, rhs = [t.strip() for t in rest.split(",", 1)]
            if rhs.startswith("{"):
                a, c = [val(t) for t in rhs.strip("{}").split(",")]
                instrs.append(("widen", val(d), a) if a == c and a == "x" else ("pack", val(d), a, c))
            elif rhs.startswith("0x"):
                instrs.append(("movi", val(d), int(rhs, 16)))
            else:
                instrs.append(("unpack", (val(d),), val(rhs)))
            continue
        args = [val(t) for t in rest.split(",")]
        if op == "shr.u32":
            instrs.append(("shr", *args))
        elif op == "xor.b32":
            instrs.append(("xor", *args))
        elif op == "prmt.b32":
            instrs.append(("prmt", *args))
        elif op == "lop3.b32":
            instrs.append(("lop3", *args))
        else:
            instrs.append((op, *args))
    return Program(variant, instrs, outs, inputs)
