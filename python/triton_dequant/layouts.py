"""Prepacked weight layouts for the tensor-core matmul: a host-side data
transformation paired with an in-kernel reshape.

(Unrelated to :mod:`triton_dequant.layout`, the opt-in TTGIR step.)

The style is triton_kernels' ``tensor_details/layout_details`` (a host swizzle
plus ``_unshuffle_triton``; read there, written here): :meth:`MmaLayout.prepack_codes`
stores the codes of a ``[K, N]`` weight so that a 1-D contiguous load of one
tile (16 bytes per thread), unpacked by ``tl.dequantize`` and relabeled by
:func:`unshuffle` (reshape / permute / reshape: no data movement), *is* the A
operand of the MMA in the swap-AB product ``Y^T[N, M] = W^T[N, K] X^T[K, M]``
(weights on the MMA's M side, tokens on its N side). The dequantized tile never
goes through shared memory (``test/lit/linear_mma.py`` pins it in SASS).

Correctness does not depend on the architecture: :func:`unshuffle` always
yields the logical ``[BN, BK]`` tile, so any layout runs anywhere (the
interpreter included); the layout only decides whether the compiler needs a
shared-memory round trip to reach the MMA's register layout.

**Tiles.** ``W^T`` is cut into ``[BN, BK]`` tiles (``BN`` values of N, ``BK`` of
K), N padded to a multiple of ``BN`` and K of ``BK`` with code 0. Storage: int32
``[N_tiles, K_tiles, BN * BK / PER]`` (``PER = 32 / nbit`` codes per word), each
tile ``(pn, kb)`` contiguous, the tiles of one row block ``pn`` consecutive along
K (the order a CTA's K loop reads them).

**Inside a tile** the flat code index ``f = PER * word + j`` (code ``j`` of a word
at bits ``[j*nbit, (j+1)*nbit)``, least significant first, as everywhere in this
package) takes the bits of the tile offsets ``(n, k)`` in the order of
:attr:`MmaLayout.code_bits`, least significant bit first, in groups::

    [ j: log2 PER | w: log2 VEC | lane: 5 | warp: log2 num_warps | rep ]

(``rep``: the N bits above the warps first, then the rest in the same order.)
That is how a 1-D blocked load of the tile (``VEC`` consecutive words per thread,
16 bytes at most: Triton's coalescing limit) followed by ``tl.dequantize`` (the
``PER`` codes of a word in consecutive registers of its thread) spreads ``f``
over registers, lanes and warps. The lane and warp bits are those of the MMA
operand layout below; its register bits are spread over ``j``, ``w`` and ``rep``
in the order "K bits ascending, then N bits ascending", so that a word holds
codes of one row ``n`` (one scale per word: the dequant asm applies it with a
packed fma) and codes ``2i, 2i+1`` of a word, which the dequant asm writes into
one 32-bit register, are the K pair the MMA reads as one operand register.

**The MMA A-operand layouts** (16-bit elements, warps ``[num_warps, 1]`` along N,
``kWidth`` consecutive K per thread, ``a = log2(kWidth)``)::

    registers: k0 .. k(a-1)
    lanes:     k(a), k(a+1), n0, n1, n2
    registers: n3, k(a+2) .. k(log2 BK - 1)
    warps:     n4 .. n(3 + log2 num_warps)
    registers: the remaining bits of n (repetitions along N)

``sm90`` (Hopper ``wgmma`` with A from registers, warp groups of 4 warps x 16
rows): Triton 3.6 uses ``kWidth = 2`` (the PTX fragment: thread ``t`` holds rows
``t/4`` and ``t/4 + 8``, columns ``2(t%4) + {0, 1}`` and ``+ 8`` of each 16x16
step). ``sm80`` (Ampere ``mma.sync.m16n8k16``): Triton's MMAv2 takes ``kWidth = 4``
for an operand produced from 32-bit words (two K steps interleaved). Example,
int4, ``BN = 128, BK = 64``, 4 warps:
sm90 ``[k0, k3, k4 | k5, n3 | k1, k2, n0, n1, n2 | n4, n5 | n6]``,
sm80 ``[k0, k1, k4 | k5, n3 | k2, k3, n0, n1, n2 | n4, n5 | n6]``.
``test/python/test_layouts.py`` compares these with Triton's own linear layouts
(``gluon``'s ``to_linear_layout``) and with the kernels' TTGIR.

**Scales.** ``scale``/``shift`` stay in the plain layout (``[N]`` or
``[K / group_size, N]``): the kernel gathers one scale/shift per word, in the
word's own register layout (no conversion). A word spans ``span_k`` values of K
(:attr:`MmaLayout.span_k`: 32 for int4, 16 for int8, 64 for int2 at the default
tiles); a smaller group splits words into 16-bit halves (:attr:`MmaLayout.span_k`
halves) with their own scales.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

__all__ = ["MmaLayout", "mma_layout", "default_layout", "as_layout", "prepack", "unprepack", "plain_codes",
           "from_gptq", "from_awq", "ARCHS", "unshuffle", "word_offsets"]

ARCHS = {"sm90": 2, "sm80": 4}  # -> kWidth of the dequantized A operand in Triton 3.6 (see the module docstring)
WORD_BITS = 32
MAX_VEC = 4   # words per thread in the tile load: 16 bytes, the most Triton's coalescing gives a thread
RANK = 8      # rank of the in-kernel relabeling (runs of consecutive bits; every shipped tile has <= 8)
NBITS = (2, 4, 8)
_NAME = re.compile(r"^mma_(sm\d+)_(\d)b_n(\d+)k(\d+)w(\d+)$")

Bit = Tuple[str, int]  # ("n" | "k", bit of the offset inside the tile)


def _log2(v: int) -> int:
    return v.bit_length() - 1


def _pow2(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0 and v & (v - 1) == 0


def _runs(bits):
    """Maximal runs of consecutive f bits mapping to consecutive bits of one axis:
    [[axis, first bit, length], ...], least significant first."""
    out = []
    for ax, b in bits:
        if out and out[-1][0] == ax and out[-1][1] + out[-1][2] == b:
            out[-1][2] += 1
        else:
            out.append([ax, b, 1])
    return out


@dataclass(frozen=True)
class MmaLayout:
    """A prepacked layout: ``arch`` (``"sm90"`` or ``"sm80"``), ``nbit`` (2, 4 or 8:
    16, 8 or 4 codes per int32 word), the tile ``[bn, bk]`` (values of N x K) and
    the ``num_warps`` of the kernel that reads it. See the module docstring."""
    arch: str
    nbit: int
    bn: int = 128
    bk: int = 64
    num_warps: int = 4
    _bits: tuple = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"`arch` must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.nbit not in NBITS:
            raise ValueError(f"`nbit` must be one of 2, 4, 8 for a prepacked layout, got {self.nbit!r}")
        for name in ("bn", "bk", "num_warps"):
            if not _pow2(getattr(self, name)):
                raise ValueError(f"`{name}` must be a power of two, got {getattr(self, name)!r}")
        if self.num_warps not in (4, 8):
            raise ValueError(f"`num_warps` must be 4 or 8, got {self.num_warps}")
        if self.bn < 16 * self.num_warps:
            raise ValueError(f"`bn` ({self.bn}) must be at least 16 * num_warps = {16 * self.num_warps} "
                             "(each warp owns 16 rows)")
        step = 4 * self.kwidth * 2  # one K step of the operand layout: k0 .. k(a+2)
        if self.bk < step:
            raise ValueError(f"`bk` ({self.bk}) must be at least {step} for {self.arch} (kWidth {self.kwidth})")
        if self.words < 32 * self.num_warps:
            raise ValueError(f"a {self.bn}x{self.bk} tile of {self.nbit}-bit codes has {self.words} words, "
                             f"fewer than the {32 * self.num_warps} threads")
        object.__setattr__(self, "_bits", _code_bits(self))
        lp = _log2(self.per)
        if any(ax == "n" for ax, _ in self.code_bits[:lp]):
            raise ValueError(f"`bk` ({self.bk}) is too small for {self.nbit}-bit codes on {self.arch}: "
                             f"a word of {self.per} codes would span rows of N")
        if len(_runs(self.code_bits)) > RANK:
            raise ValueError(f"layout {self.name} needs a rank-{len(_runs(self.code_bits))} relabeling "
                             f"(at most {RANK})")

    # --- derived constants ---------------------------------------------------------------
    @property
    def per(self) -> int:
        """Codes per int32 word."""
        return WORD_BITS // self.nbit

    @property
    def kwidth(self) -> int:
        return ARCHS[self.arch]

    @property
    def words(self) -> int:
        """int32 words per tile."""
        return self.bn * self.bk // self.per

    @property
    def vec(self) -> int:
        """Consecutive words per thread in the tile load."""
        return min(MAX_VEC, self.words // (32 * self.num_warps))

    @property
    def name(self) -> str:
        """``mma_<arch>_<nbit>b_n<bn>k<bk>w<num_warps>``, accepted by :meth:`from_name`."""
        return f"mma_{self.arch}_{self.nbit}b_n{self.bn}k{self.bk}w{self.num_warps}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def from_name(cls, name: str) -> "MmaLayout":
        return _from_name(name)

    @property
    def operand_bits(self) -> dict:
        """The MMA A operand's layout ``{"reg": [...], "lane": [...], "warp": [...]}``,
        each a list of ``(axis, bit)`` in Triton's basis order."""
        a = _log2(self.kwidth)
        lk, ln, lw = _log2(self.bk), _log2(self.bn), _log2(self.num_warps)
        reg = [("k", i) for i in range(a)] + [("n", 3)] + [("k", i) for i in range(a + 2, lk)]
        reg += [("n", i) for i in range(4 + lw, ln)]
        lane = [("k", a), ("k", a + 1), ("n", 0), ("n", 1), ("n", 2)]
        warp = [("n", 4 + i) for i in range(lw)]
        return {"reg": reg, "lane": lane, "warp": warp}

    @property
    def code_bits(self) -> Tuple[Bit, ...]:
        """``(axis, bit)`` of each bit of the flat code index ``f``, least significant first."""
        return self._bits

    @property
    def span_k(self) -> int:
        """Values of K one word spans (its codes lie in ``[k0, k0 + span_k)``, ``k0`` a
        multiple of ``span_k``): scales per word need groups that are multiples of it."""
        top = max(b for ax, b in self.code_bits[:_log2(self.per)])
        return 2 << top

    def splits(self, group_size: Optional[int]) -> int:
        """Sub-words (1 or 2) each within one group of ``group_size`` (None: per channel)."""
        if group_size is None or group_size % self.span_k == 0:
            return 1
        half = 2 << max(b for ax, b in self.code_bits[:_log2(self.per) - 1])
        if group_size % half == 0:
            return 2
        raise ValueError(f"layout {self.name}: group_size {group_size} must be a multiple of {half} "
                         f"(a word spans {self.span_k} values of K)")

    def check_group_size(self, group_size: int) -> None:
        """``ValueError`` unless the kernel takes per-group scales of ``group_size``
        with this layout: a multiple of ``bk``, or a divisor of ``bk`` that is a
        multiple of half a word's K span."""
        if group_size % self.bk and self.bk % group_size:
            raise ValueError(f"`group_size` ({group_size}) must be a multiple or a divisor of the layout's "
                             f"K tile ({self.bk}, {self.name})")
        try:
            self.splits(group_size)
        except ValueError as e:
            raise ValueError(f"`group_size`: {e}") from None

    def compatible_warps(self) -> Tuple[int, ...]:
        """``num_warps`` values whose layout stores the same bytes (a kernel may read
        this layout with any of them at full speed)."""
        out = []
        for w in (4, 8):
            try:
                if MmaLayout(self.arch, self.nbit, self.bn, self.bk, w).code_bits == self.code_bits:
                    out.append(w)
            except ValueError:
                pass
        return tuple(out)

    # --- the in-kernel relabeling (constexprs of :func:`unshuffle` / :func:`word_offsets`) ---------
    def unshuffle_shape(self) -> Tuple[int, ...]:
        """The flat f index viewed as its runs of bits (most significant first),
        padded to ``RANK`` dims with leading 1s."""
        r = _runs(self.code_bits)
        return (1,) * (RANK - len(r)) + tuple(1 << ln for _, _, ln in reversed(r))

    def unshuffle_perm(self) -> Tuple[int, ...]:
        """Permutation of :meth:`unshuffle_shape`'s dims into (runs of n, most
        significant first; then the runs of k): then a reshape gives ``[BN, BK]``."""
        r = _runs(self.code_bits)
        pad = RANK - len(r)
        order = sorted(range(len(r)), key=lambda i: (r[i][0] != "n", -r[i][1]))
        return tuple(range(pad)) + tuple(pad + len(r) - 1 - i for i in order)

    def word_runs(self, axis: str) -> Tuple[int, ...]:
        """``(src, dst, mask)`` x 6 (unused triples zero): the bits of a word index
        that belong to ``axis`` ("n" or "k") and where they go in the tile offset."""
        lp = _log2(self.per)
        out = []
        for i, (ax, b) in enumerate(self.code_bits):
            if i < lp or ax != axis:
                continue
            if out and out[-1][0] + out[-1][2] == i - lp and out[-1][1] + out[-1][2] == b:
                out[-1][2] += 1
            else:
                out.append([i - lp, b, 1])
        assert len(out) <= 6, out
        flat = []
        for src, dst, ln in out + [[0, 0, 0]] * (6 - len(out)):
            flat += [src, dst, (1 << ln) - 1]
        return tuple(flat)

    # --- index maps ----------------------------------------------------------------------------
    def offsets(self, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(n, k)`` offsets inside the tile of every flat code index ``f`` (int64 ``[BN*BK]``)."""
        f = torch.arange(self.bn * self.bk, dtype=torch.int64, device=device)
        n = torch.zeros_like(f)
        k = torch.zeros_like(f)
        for i, (ax, b) in enumerate(self.code_bits):
            bit = ((f >> i) & 1) << b
            if ax == "n":
                n |= bit
            else:
                k |= bit
        return n, k

    def tiles(self, K: int, N: int) -> Tuple[int, int]:
        """``(N_tiles, K_tiles)``."""
        return -(-N // self.bn), -(-K // self.bk)

    def shape(self, K: int, N: int) -> Tuple[int, int, int]:
        """Shape of the prepacked int32 tensor of a ``[K, N]`` weight."""
        nt, kt = self.tiles(K, N)
        return nt, kt, self.words

    # --- host transformation -----------------------------------------------------------------------
    def prepack_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes``: ``[K, N]`` integer tensor of codes (``[0, 2**nbit)``, or signed
        nbit-bit values, kept as their two's complement bits) -> int32
        ``[N_tiles, K_tiles, words]`` (any device; padding codes are 0)."""
        from .packing import pack
        if not isinstance(codes, torch.Tensor) or codes.dim() != 2 or codes.is_floating_point():
            raise ValueError(f"`codes` must be a 2-D integer tensor [K, N], got "
                             f"{getattr(codes, 'dtype', type(codes).__name__)} {list(getattr(codes, 'shape', []))}")
        K, N = codes.shape
        nt, kt = self.tiles(K, N)
        c = (codes.to(torch.int32) & ((1 << self.nbit) - 1)).to(torch.uint8)
        c = F.pad(c, (0, nt * self.bn - N, 0, kt * self.bk - K))
        c = c.reshape(kt, self.bk, nt, self.bn).permute(2, 0, 3, 1).reshape(nt, kt, self.bn * self.bk)
        n, k = self.offsets(codes.device)
        return pack(c[:, :, n * self.bk + k], self.nbit, dim=-1, container=torch.int32, check=False)

    def unprepack_codes(self, data: torch.Tensor, K: int, N: int, signed: bool = False) -> torch.Tensor:
        """Inverse of :meth:`prepack_codes`: the ``[K, N]`` codes (uint8, int8 when ``signed``)."""
        from .packing import unpack
        self.check_data(data, K, N, "data")
        nt, kt = self.tiles(K, N)
        f = unpack(data, self.nbit, dim=-1, signed=signed)               # [nt, kt, BN*BK], f order
        n, k = self.offsets(data.device)
        tile = torch.empty_like(f)
        tile[:, :, n * self.bk + k] = f
        c = tile.reshape(nt, kt, self.bn, self.bk).permute(1, 3, 0, 2).reshape(kt * self.bk, nt * self.bn)
        return c[:K, :N].contiguous()

    def check_data(self, data, K: int, N: int, name: str = "qweight") -> None:
        """``ValueError``/``TypeError`` naming ``name`` unless ``data`` is this layout's tensor for ``[K, N]``."""
        if not isinstance(data, torch.Tensor) or data.dtype != torch.int32:
            raise TypeError(f"`{name}` in layout {self.name} must be an int32 tensor, got "
                            f"{getattr(data, 'dtype', type(data).__name__)}")
        want = self.shape(K, N)
        if tuple(data.shape) != want:
            raise ValueError(f"`{name}` in layout {self.name} for K={K}, N={N} must have shape {list(want)}, "
                             f"got {list(data.shape)}")


def _code_bits(layout: MmaLayout) -> Tuple[Bit, ...]:
    ob = layout.operand_bits
    regs = sorted(ob["reg"], key=lambda b: (b[0] != "k", b[1]))  # K bits ascending, then N ascending
    nreg = _log2(layout.per) + _log2(layout.vec)
    # repetitions: the N bits above the warps first, so that with twice the warps
    # (where those bits become warp bits) the same bytes serve (compatible_warps)
    top = 4 + _log2(layout.num_warps)
    reps = sorted(regs[nreg:], key=lambda b: not (b[0] == "n" and b[1] >= top))
    return tuple(regs[:nreg] + ob["lane"] + ob["warp"] + reps)


def _from_name(name: str) -> MmaLayout:
    m = _NAME.match(str(name))
    if not m:
        raise ValueError(f"`layout` must be a layout name like 'mma_sm90_4b_n128k64w4', got {name!r}")
    arch, nbit, bn, bk, w = m.groups()
    return MmaLayout(arch, int(nbit), int(bn), int(bk), int(w))


def _arch_of(arch) -> str:
    if isinstance(arch, MmaLayout):
        return arch.arch
    if isinstance(arch, torch.device):
        arch = torch.cuda.get_device_capability(arch)
    if isinstance(arch, tuple):
        arch = 10 * arch[0] + arch[1]
    if isinstance(arch, int) and not isinstance(arch, bool):
        if arch < 80:
            raise ValueError(f"`arch`: prepacked layouts need compute capability >= 8.0, got {arch}")
        return "sm90" if arch >= 90 else "sm80"
    if arch in ARCHS:
        return arch
    raise ValueError(f"`arch` must be 'sm90', 'sm80', a compute capability or a CUDA device, got {arch!r}")


def mma_layout(arch, nbit: int, bn: int = 128, bk: int = 64, num_warps: int = 4) -> MmaLayout:
    """The layout for ``arch`` (``"sm90"``/``"sm80"``, a compute capability such as
    ``90`` or ``(9, 0)``, or a CUDA device)."""
    return MmaLayout(_arch_of(arch), nbit, bn, bk, num_warps)


def default_layout(arch, nbit: int) -> MmaLayout:
    """The layout the shipped kernel is tuned for: ``128 x 64`` tiles of 4 warps,
    ``128 x 128`` for int2. Their bytes serve 8-warp kernels too
    (:meth:`MmaLayout.compatible_warps`: the launch table's ``bm = 128`` tiles);
    an int2 ``128 x 64`` tile would not (4 warps load 4 words per thread, 8
    warps 2)."""
    return mma_layout(arch, nbit, 128, 128 if nbit == 2 else 64, 4)


def as_layout(layout) -> MmaLayout:
    """An :class:`MmaLayout` from itself or its name."""
    if isinstance(layout, MmaLayout):
        return layout
    if isinstance(layout, str):
        return _from_name(layout)
    raise TypeError(f"`layout` must be an MmaLayout or a layout name, got {type(layout).__name__}")


# --- host entry points ----------------------------------------------------------------------------

def prepack(qweight: torch.Tensor, nbit: int, layout, *, packed_dim: int = 0) -> torch.Tensor:
    """The plain layout of :func:`triton_dequant.ops.linear` (int32 codes packed along
    K, ``[K/PER, N]``, or along N, ``[K, N/PER]``) -> ``layout``'s int32
    ``[N_tiles, K_tiles, words]``."""
    from .packing import unpack
    layout = as_layout(layout)
    if nbit != layout.nbit:
        raise ValueError(f"`nbit` ({nbit}) differs from the layout's ({layout.nbit})")
    if not isinstance(qweight, torch.Tensor) or qweight.dtype != torch.int32 or qweight.dim() != 2:
        raise TypeError(f"`qweight` must be a 2-D int32 tensor, got {getattr(qweight, 'dtype', type(qweight))}")
    if packed_dim not in (0, 1):
        raise ValueError(f"`packed_dim` must be 0 (packed along K) or 1 (along N), got {packed_dim!r}")
    return layout.prepack_codes(unpack(qweight, nbit, dim=packed_dim))


def unprepack(data: torch.Tensor, layout, K: int, N: int, *, packed_dim: int = 0) -> torch.Tensor:
    """Inverse of :func:`prepack` (``K`` or ``N``, along ``packed_dim``, a multiple
    of the codes per word)."""
    from .packing import pack
    layout = as_layout(layout)
    if (K, N)[packed_dim] % layout.per:
        raise ValueError(f"{'KN'[packed_dim]}={(K, N)[packed_dim]} must be a multiple of {layout.per} "
                         f"to pack along dim {packed_dim}")
    codes = layout.unprepack_codes(data, K, N)
    return pack(codes, layout.nbit, dim=packed_dim, container=torch.int32, check=False)


def plain_codes(data: torch.Tensor, layout, K: int, N: int, signed: bool = False) -> torch.Tensor:
    """The codes of prepacked ``data`` as ``[K, N]`` 8-bit containers (uint8, int8
    when ``signed``): the plain layout of :func:`triton_dequant.ops.linear` with
    ``nbit=8`` and one code per element, any K (the CPU reference path)."""
    return as_layout(layout).unprepack_codes(data, K, N, signed=signed)


def from_gptq(qweight, qzeros, scales, layout, *, nbit: int = 4, zeros_minus_one: bool = True, g_idx=None):
    """GPTQ checkpoint tensors -> ``(prepacked, scale, shift)`` for ``layout``
    (via :func:`triton_dequant.interop.from_gptq`; 2, 4, 8 bits)."""
    from . import interop
    packed, scale, shift = interop.from_gptq(qweight, qzeros, scales, nbit=nbit,
                                             zeros_minus_one=zeros_minus_one, g_idx=g_idx)
    return prepack(packed, nbit, layout), scale, shift


def from_awq(qweight, qzeros, scales, layout, *, nbit: int = 4):
    """AWQ GEMM checkpoint tensors -> ``(prepacked, scale, shift)`` for ``layout``
    (via :func:`triton_dequant.interop.from_awq`)."""
    from . import interop
    packed, scale, shift = interop.from_awq(qweight, qzeros, scales, nbit=nbit, packed_dim=0)
    return prepack(packed, nbit, layout), scale, shift


# --- the in-kernel side ------------------------------------------------------------------------------
# (constexpr functions: Triton's cache-key walker accepts only jit/constexpr functions and
# classes by name in their bodies, so the host helpers are reached through the layout object)

@triton.constexpr_function
def _layout(name):
    """The layout of a :attr:`MmaLayout.name` ("mma_sm90_4b_n128k64w4"), parsed with str methods only."""
    _, arch, nb, tile = name.split("_")
    bn, rest = tile[1:].split("k")
    bk, warps = rest.split("w")
    return MmaLayout(arch, int(nb[:-1]), int(bn), int(bk), int(warps))


@triton.constexpr_function
def _shape(name):
    return _layout(name).unshuffle_shape()


@triton.constexpr_function
def _perm(name):
    return _layout(name).unshuffle_perm()


@triton.constexpr_function
def _word_runs(name, axis):
    return _layout(name).word_runs(axis)


@triton.jit
def _gather_bits(idx, R: tl.constexpr):
    out = ((idx >> R[0]) & R[2]) << R[1]
    out |= ((idx >> R[3]) & R[5]) << R[4]
    out |= ((idx >> R[6]) & R[8]) << R[7]
    out |= ((idx >> R[9]) & R[11]) << R[10]
    out |= ((idx >> R[12]) & R[14]) << R[13]
    out |= ((idx >> R[15]) & R[17]) << R[16]
    return out


@triton.jit
def word_offsets(idx, LAYOUT: tl.constexpr):
    """``(n, k)`` offsets inside the tile of word ``idx`` (its code 0) for the layout named ``LAYOUT``."""
    return _gather_bits(idx, _word_runs(LAYOUT, "n")), _gather_bits(idx, _word_runs(LAYOUT, "k"))


@triton.jit
def unshuffle(q, BN: tl.constexpr, BK: tl.constexpr, LAYOUT: tl.constexpr):
    """The dequantized tile in ``f`` order (any shape holding ``BN * BK`` values
    row-major, e.g. ``[words, PER]``) -> the logical ``[BN, BK]`` tile.
    A pure relabeling of registers for the layout's MMA (reshape, permute, reshape)."""
    S: tl.constexpr = _shape(LAYOUT)
    P: tl.constexpr = _perm(LAYOUT)
    q = tl.reshape(q, S)
    q = tl.permute(q, (P[0], P[1], P[2], P[3], P[4], P[5], P[6], P[7]))
    return tl.reshape(q, [BN, BK])
