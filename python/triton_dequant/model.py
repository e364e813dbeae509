"""Models: :class:`QuantizedLinear` (a weight-only low-bit ``nn.Linear``) and
:func:`quantize_model` (swap a model's ``nn.Linear`` layers in place).

A :class:`QuantizedLinear` holds the codes of ``W^T`` (``[in_features,
out_features]`` = ``[K, N]``) packed in int32 in the layout its kernels read,
per-group (or per-channel) ``scale``/``shift`` ``[G, N]`` with ``W^T[k, n] =
scale[k // group_size, n] * q[k, n] + shift[k // group_size, n]``, an optional
``bias [N]`` and, for act-order GPTQ checkpoints, the input permutation ``perm
[K]``. ``forward(x)`` is :func:`triton_dequant.ops.linear` (the Triton kernels on
CUDA, its CPU path on the CPU) with the bias added to its fp32 sums (one rounding,
as ``nn.Linear``'s ``addmm``). Every tensor is a registered buffer, so ``state_dict()`` / ``load_state_dict()`` and safetensors
round-trip bit for bit, and ``module.to(device)`` moves them.

Layouts (chosen at construction, ``layout=``; :data:`LAYOUTS`):

* ``"plain"`` (``qweight [K / PER, N]`` int32, ``PER = 32 // nbit`` codes per word
  along K, code ``j`` of word ``r`` = row ``r*PER + j`` at bits ``[j*nbit,
  (j+1)*nbit)``: GPTQ's order, :func:`triton_dequant.packing.pack` along dim 0),
  every nbit (1, 2, 4, 8). On CUDA the op runs the GEMV for M <= 4, the
  tensor-core kernel on plain words (the dequantized tile through shared memory)
  above, dequantize + cuBLAS from ``DEQUANT_MIN_M`` (``kernels/linear/_config.py``).
* the prepacked tensor-core layouts of :mod:`triton_dequant.layouts`
  (``"mma_sm90_4b_n128k64w4"`` ...: ``qweight [N_tiles, K_tiles, words]`` int32
  stored in the MMA operand's register order, scale/shift as in ``"plain"``), one
  per arch (``sm90``: wgmma, ``sm80``: mma.sync) and nbit 2, 4, 8: the shipped
  kernel's default tiles (:func:`triton_dequant.layouts.default_layout`).
  ``"mma_sm90"`` / ``"mma_sm80"`` name the one for the layer's nbit. The
  prepacked kernel serves every M, decode included (``linear`` never prepacks on
  the fly). There is no prepacked int1 layout. Any layout runs on any device (the
  CPU path reads the codes back, exactly); the arch only decides whether the
  compiled kernel needs a shared-memory round trip.
* ``"auto"`` (the default): :func:`auto_layout`, the ONE place of the rule: the
  prepacked layout of the target device's arch when it is a CUDA GPU of compute
  capability >= 8.0 and the nbit and group size fit (groups a multiple or a
  divisor of the layout's K tile), else ``"plain"``. The target device is the
  weights' (``from_linear``: the ``nn.Linear``'s; the constructor: ``device``):
  quantize on the GPU, or pass the layout, or call :meth:`QuantizedLinear.to_layout`
  (``"auto"`` there means the layer's current device) after ``.to("cuda")``. The
  alternative at decode (M <= 4) is the plain layout's GEMV; which is faster at
  M = 1 is measured by ``bench/decode.py`` (impls ``"ours"`` = auto and
  ``"ours-plain"``), and the rule follows the measurement.

A layout is a pair of exact host transformations from / to the plain form
(words, scale, shift) plus the op that reads it (:class:`_Layout`);
:meth:`QuantizedLinear._set` is the one place where buffers are made from the
plain form. The layout's stable ``code`` is stored in the state dict
(``qconfig``), so a state dict loads only into a layer of the same layout
(convert with :meth:`QuantizedLinear.to_layout`).
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict, Optional

import torch
from torch import nn

from . import interop, layouts, ops, packing
from . import reference as ref

__all__ = ["QuantizedLinear", "quantize_model", "LAYOUTS", "auto_layout"]

_NBITS = (1, 2, 4, 8)  # what ops.linear reads from int32 words (padded packing)
_WIDTH = 32            # container bits: int32 words, as GPTQ
_SCALE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_BLOCK = 1 << 24  # weights per step of from_linear / dequantized_weight (bounds their float64 temporaries)


class _Layout:
    """How a layer's weight is stored for its kernels.

    ``from_plain`` / ``to_plain`` convert between the plain form (int32 words
    ``[K / PER, N]`` packed along K, ``scale``/``shift`` ``[G, N]``) and the stored
    buffers, exact inverses of each other; ``empty`` makes stored buffers of the
    right shapes and dtypes (for empty or meta modules, filled by ``load_state_dict``);
    ``linear`` is ``x @ W + bias`` on the stored buffers (the bias added to the fp32
    sums, one rounding); ``check`` raises ``ValueError`` naming the argument if the
    layout cannot hold ``nbit`` codes in groups of ``group_size`` (None: per channel)."""
    name = ""
    code = -1  # stored in the state dict (``qconfig``); never reuse a number

    def check(self, nbit: int, group_size: Optional[int]) -> None:
        pass

    def empty(self, K: int, N: int, G: int, nbit: int, scale_dtype, device):
        raise NotImplementedError

    def from_plain(self, qweight, scale, shift, nbit: int):
        raise NotImplementedError

    def to_plain(self, qweight, scale, shift, nbit: int, K: int, N: int):
        raise NotImplementedError

    def linear(self, x, qweight, scale, shift, nbit: int, group_size: int, signed: bool,
               bias: Optional[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


def _scales(G, N, scale_dtype, device):
    return torch.ones(G, N, dtype=scale_dtype, device=device), torch.zeros(G, N, dtype=scale_dtype, device=device)


class _Plain(_Layout):
    name, code = "plain", 0

    def empty(self, K, N, G, nbit, scale_dtype, device):
        return (torch.zeros(K // (_WIDTH // nbit), N, dtype=torch.int32, device=device),
                *_scales(G, N, scale_dtype, device))

    def from_plain(self, qweight, scale, shift, nbit):
        return qweight.contiguous(), scale.contiguous(), shift.contiguous()

    def to_plain(self, qweight, scale, shift, nbit, K, N):
        return qweight, scale, shift

    def linear(self, x, qweight, scale, shift, nbit, group_size, signed, bias):
        return ops.linear(x, qweight, scale, shift, nbit, group_size, packed_dim=0, signed=signed, bias=bias)


class _Prepacked(_Layout):
    """A prepacked tensor-core layout (:class:`triton_dequant.layouts.MmaLayout`):
    ``qweight`` int32 ``[N_tiles, K_tiles, words]``, scale/shift as in the plain
    layout. Converted in blocks of whole N tiles (bounded temporaries)."""

    def __init__(self, name: str, code: int):
        self.mma = layouts.MmaLayout.from_name(name)
        self.name, self.code = name, code

    def check(self, nbit, group_size):
        if nbit != self.mma.nbit:
            why = ("there is no prepacked layout for 1-bit codes: use 'plain'" if nbit not in layouts.NBITS
                   else f"it holds {self.mma.nbit}-bit codes")
            raise ValueError(f"`layout` {self.name!r} cannot hold nbit={nbit} codes ({why})")
        if group_size is not None:
            self.mma.check_group_size(group_size)  # names `group_size`

    def _tiles_per_block(self, K: int) -> int:
        return max(1, _BLOCK // (max(K, 1) * self.mma.bn))

    def empty(self, K, N, G, nbit, scale_dtype, device):
        return (torch.zeros(self.mma.shape(K, N), dtype=torch.int32, device=device),
                *_scales(G, N, scale_dtype, device))

    def from_plain(self, qweight, scale, shift, nbit):
        K, N = qweight.shape[0] * (_WIDTH // nbit), qweight.shape[1]
        cols = self._tiles_per_block(K) * self.mma.bn
        data = [layouts.prepack(qweight[:, n:n + cols], nbit, self.mma) for n in range(0, N, cols)]
        return (data[0] if len(data) == 1 else torch.cat(data)), scale.contiguous(), shift.contiguous()

    def to_plain(self, qweight, scale, shift, nbit, K, N):
        tn, bn = self._tiles_per_block(K), self.mma.bn
        parts = [layouts.unprepack(qweight[t:t + tn], self.mma, K, min(N - t * bn, tn * bn))
                 for t in range(0, qweight.shape[0], tn)]
        return (parts[0] if len(parts) == 1 else torch.cat(parts, 1)), scale, shift

    def linear(self, x, qweight, scale, shift, nbit, group_size, signed, bias):
        return ops.linear(x, qweight, scale, shift, nbit, group_size, signed=signed, layout=self.mma, bias=bias)


# Stable codes of the prepacked layouts a QuantizedLinear stores (qconfig[3]; never reuse a
# number: a new tile gets a new code). They are layouts.default_layout(arch, nbit) of today
# (test_model checks that every default layout has a code).
_MMA_CODES = {
    "mma_sm90_4b_n128k64w4": 1, "mma_sm90_8b_n128k64w4": 2, "mma_sm90_2b_n128k128w4": 3,
    "mma_sm80_4b_n128k64w4": 4, "mma_sm80_8b_n128k64w4": 5, "mma_sm80_2b_n128k128w4": 6,
}
# name -> layout
LAYOUTS: Dict[str, _Layout] = {lay.name: lay for lay in
                               (_Plain(), *(_Prepacked(name, code) for name, code in _MMA_CODES.items()))}
_BY_CODE = {lay.code: lay for lay in LAYOUTS.values()}
_ARCH_ALIASES = {"mma_sm90": "sm90", "mma_sm80": "sm80"}  # -> the default tile for the layer's nbit


def auto_layout(nbit: int, group_size: Optional[int], device) -> str:
    """The layout ``layout="auto"`` picks for ``nbit`` codes in groups of
    ``group_size`` rows of K (None: per channel) on ``device`` (None: the CPU).

    The ONE place of the rule, decided by decode at M = 1 on the H200
    (``bench/decode.py``, ``bench/results/h200.json``: 4 Llama-3-8B layers, int4 g128,
    batch 1, CUDA graphs): ``"plain"`` -- its GEMV took 837 us per token, the
    prepacked tensor-core kernel 1123 us (fp16 ``nn.Linear``: 1178 us). At batch 16
    the prepacked layout won (1295 us against 2128 us): pass ``layout="mma_sm90"`` /
    ``"mma_sm80"`` for batched serving or prefill. Every device gets ``"plain"``
    (the arguments are the rule's inputs should the figures change)."""
    return "plain"


def _check_int(v, name: str, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"`{name}` must be an int >= {lo}, got {v!r}")
    return v


def _check_nbit(nbit, name: str = "nbit") -> int:
    if isinstance(nbit, bool) or not isinstance(nbit, int) or nbit not in _NBITS:
        raise ValueError(f"`{name}` must be one of {', '.join(map(str, _NBITS))} (codes read from int32 "
                         f"words by triton_dequant.ops.linear), got {nbit!r}")
    return nbit


def _group_size(group_size, in_features: int, nbit: int) -> int:
    """Effective group size (``None`` -> per channel: one group of ``in_features``);
    raises ``ValueError`` if the layer cannot be packed with it."""
    per = _WIDTH // nbit
    if group_size is None or group_size == -1:  # -1: GPTQ/AWQ configs' "per channel"
        if in_features % per:
            raise ValueError(f"`in_features` ({in_features}) must be a multiple of {per} (codes per int32 "
                             f"word at nbit={nbit}) for per-channel quantization")
        return in_features
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"`group_size` must be a positive int, None or -1 (per channel), got {group_size!r}")
    if group_size % per:
        raise ValueError(f"`group_size` ({group_size}) must be a multiple of {per} (codes per int32 word at "
                         f"nbit={nbit})")
    if in_features % group_size:
        raise ValueError(f"`group_size` ({group_size}) must divide `in_features` ({in_features})")
    return group_size


def _resolve_layout(layout, nbit: int, group_size: Optional[int], device) -> str:
    """The name in :data:`LAYOUTS` of ``layout`` ("auto", "mma_sm90"/"mma_sm80", a
    name of LAYOUTS or its :class:`~triton_dequant.layouts.MmaLayout`) for ``nbit``
    codes in groups of ``group_size`` (None: per channel) on ``device`` (for "auto");
    ``ValueError`` naming the argument if the layout cannot hold them."""
    if isinstance(layout, layouts.MmaLayout):
        layout = layout.name
    if layout == "auto":
        return auto_layout(nbit, group_size, device)
    if isinstance(layout, str) and layout in _ARCH_ALIASES:
        if nbit not in layouts.NBITS:
            raise ValueError(f"`layout` {layout!r}: there is no prepacked layout for {nbit}-bit codes (nbit 2, 4 "
                             f"or 8), use 'plain'")
        layout = layouts.default_layout(_ARCH_ALIASES[layout], nbit).name
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"`layout` must be 'auto', {', '.join(map(repr, _ARCH_ALIASES))} or one of "
                         f"{', '.join(map(repr, LAYOUTS))}, got {layout!r}")
    LAYOUTS[layout].check(nbit, group_size)
    return layout


def _per_group(group: int, in_features: int) -> Optional[int]:
    """Rows per group as the layouts see it: None for one group (per channel)."""
    return None if group == in_features else group


def _pick_layout(layout, nbit, group_size, in_features: int, device) -> str:
    """:func:`_resolve_layout` for a layer of ``in_features`` quantized with these arguments."""
    nbit = _check_nbit(nbit)
    return _resolve_layout(layout, nbit, _per_group(_group_size(group_size, in_features, nbit), in_features), device)


class QuantizedLinear(nn.Module):
    """Weight-only ``nbit`` linear layer: ``y = x @ W^T + bias``, ``W`` the
    dequantized ``[out_features, in_features]`` weight (:meth:`dequantized_weight`).

    Build one with :meth:`from_linear`, :meth:`from_gptq` or :meth:`from_awq`, or
    empty (zero buffers, also on the meta device) with the constructor and fill it
    with ``load_state_dict``.

    Buffers (all in the state dict):

    * ``qweight``: int32 codes of ``W^T`` in ``layout`` (``"plain"``: ``[K / PER, N]``,
      ``PER = 32 // nbit``, packed along K; a prepacked layout: ``[N_tiles, K_tiles,
      words]``; see the module docstring);
    * ``scale``, ``shift``: ``[G, N]`` of ``scale_dtype``, ``G = K / group_size``
      (``G = 1``: per channel);
    * ``bias``: ``[N]`` or absent;
    * ``perm``: int32 ``[K]`` or absent; when present ``forward`` computes
      ``x[..., perm] @ W^T[perm]`` (act-order GPTQ: groups made contiguous at load);
    * ``qconfig``: int32 ``[nbit, rows per group (in_features when per channel),
      signed, layout code]``, checked by ``load_state_dict`` so that a state dict never loads into
      a layer that would read it differently.

    ``signed=True``: codes are ``nbit``-bit two's complement (symmetric
    quantization, ``shift = 0``).

    ``layout``: ``"auto"`` (default: :func:`auto_layout` for ``device``; the CPU and
    the meta device get ``"plain"``), ``"plain"``, ``"mma_sm90"`` / ``"mma_sm80"``
    (the prepacked layout for ``nbit``) or a name of :data:`LAYOUTS`; the
    attribute ``layout`` holds the resolved name. :meth:`to_layout` converts.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, nbit: int = 4,
                 group_size: Optional[int] = 128, signed: bool = False, layout: str = "auto",
                 scale_dtype: torch.dtype = torch.float16, act_order: bool = False, device=None):
        super().__init__()
        self.in_features = _check_int(in_features, "in_features", 1)
        self.out_features = _check_int(out_features, "out_features", 1)
        self.nbit = _check_nbit(nbit)
        self.group_size = None if group_size in (None, -1) else group_size
        self._group = _group_size(group_size, in_features, nbit)
        if not isinstance(signed, bool):
            raise TypeError(f"`signed` must be a bool, got {signed!r}")
        if signed and nbit < 2:
            raise ValueError("`signed` codes need nbit >= 2")
        self.signed = signed
        self.layout = _resolve_layout(layout, nbit, _per_group(self._group, in_features), device)
        self._lay = LAYOUTS[self.layout]
        if scale_dtype not in _SCALE_DTYPES:
            raise TypeError(f"`scale_dtype` must be one of torch.float16, torch.bfloat16, torch.float32, "
                            f"got {scale_dtype}")
        K, N, G = in_features, out_features, in_features // self._group
        qweight, scale, shift = self._lay.empty(K, N, G, nbit, scale_dtype, device)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        self.register_buffer("bias", torch.zeros(N, dtype=scale_dtype, device=device) if bias else None)
        self.register_buffer("perm", torch.arange(K, dtype=torch.int32, device=device) if act_order else None)
        self.register_buffer("qconfig", self._qconfig(device))

    # --- construction ------------------------------------------------------------------------

    def _qconfig(self, device=None) -> torch.Tensor:
        return torch.tensor([self.nbit, self._group, int(self.signed), self._lay.code],
                            dtype=torch.int32, device=device)

    def _set(self, plain: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, bias: Optional[torch.Tensor],
             perm: Optional[torch.Tensor]) -> "QuantizedLinear":
        """The one place where buffers are produced from plain int32 words ``[K / PER, N]``."""
        K, N = self.in_features, self.out_features
        G = K // self._group
        if plain.shape != (K // (_WIDTH // self.nbit), N) or plain.dtype != torch.int32:
            raise ValueError(f"plain codes must be int32 {[K // (_WIDTH // self.nbit), N]}, got {plain.dtype} "
                             f"{list(plain.shape)}")
        for name, t in (("scale", scale), ("shift", shift)):
            if t.shape != (G, N):
                raise ValueError(f"`{name}` must be [{G}, {N}], got {list(t.shape)}")
        dev = plain.device
        self.qweight, self.scale, self.shift = self._lay.from_plain(plain, scale.to(dev),
                                                                    shift.to(device=dev, dtype=scale.dtype), self.nbit)
        if bias is not None:
            if bias.shape != (N,):
                raise ValueError(f"`bias` must be [{N}], got {list(bias.shape)}")
            self.bias = bias.detach().to(dev).contiguous()
        else:
            self.bias = None
        self.perm = None if perm is None else perm.to(device=dev, dtype=torch.int32).contiguous()
        self.qconfig = self._qconfig(dev)
        return self

    @classmethod
    def from_linear(cls, linear: nn.Linear, nbit: int = 4, group_size: Optional[int] = 128, signed: bool = False,
                    *, layout: str = "auto", scale_dtype: Optional[torch.dtype] = None) -> "QuantizedLinear":
        """Quantize an ``nn.Linear`` with :func:`triton_dequant.packing.quantize`
        (affine min/max per group of ``group_size`` input features, symmetric when
        ``signed``; ``None``: per output channel). ``scale_dtype`` defaults to the
        weight's dtype if fp16/bf16, else fp16. The bias is kept as it is. The
        result is on the weight's device, whose :func:`auto_layout` ``"auto"`` picks.
        A layer on the meta device gives an empty module of the right shapes."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"`linear` must be an nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        if scale_dtype is None:
            scale_dtype = w.dtype if w.dtype in (torch.float16, torch.bfloat16) else torch.float16
        has_bias = linear.bias is not None
        layout = _pick_layout(layout, nbit, group_size, linear.in_features, w.device)
        mod = cls(linear.in_features, linear.out_features, has_bias, nbit=nbit, group_size=group_size,
                  signed=signed, layout=layout, scale_dtype=scale_dtype, device="meta")
        if w.is_meta:
            if has_bias:
                mod.bias = torch.empty(linear.out_features, dtype=linear.bias.dtype, device="meta")
            return mod
        cols = max(1, _BLOCK // linear.in_features)  # output channels per step (quantize works in float64)
        parts = [packing.quantize(w.detach()[n:n + cols].t(), nbit, group_size=mod._group, dim=0, signed=signed,
                                  scale_dtype=scale_dtype) for n in range(0, linear.out_features, cols)]
        packed, scale, shift = (torch.cat(t, 1) for t in zip(*parts))
        return mod._set(packed, scale, shift, linear.bias, None)

    @classmethod
    def from_gptq(cls, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                  g_idx: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None, *, bits: int,
                  group_size: Optional[int], zeros_minus_one: bool = True, layout: str = "auto"
                  ) -> "QuantizedLinear":
        """A GPTQ (AutoGPTQ ``QuantLinear``) layer: ``qweight [K*bits/32, N]``,
        ``qzeros [G, N*bits/32]``, ``scales [G, N]``, optional ``g_idx [K]`` and
        ``bias [N]``; ``bits`` 2, 4 or 8; ``group_size`` the checkpoint's (``-1`` or
        ``None``: per channel). See :func:`triton_dequant.interop.from_gptq` for the
        bit layout and ``zeros_minus_one``. An act-order ``g_idx`` is applied once
        here (rows of K reordered so that groups are contiguous, ``perm`` kept) and
        ``forward`` gathers ``x[..., perm]``: the result is ``x @ W`` for the
        checkpoint's ``W[n, k] = scales[g_idx[k], n] * q[k, n] + shift[g_idx[k], n]``,
        ``shift = -scale * zero`` rounded once to ``scales.dtype``. ``layout``: as in
        :meth:`from_linear` (``"auto"``: for ``qweight``'s device)."""
        if bits not in (2, 4, 8) or isinstance(bits, bool):
            raise ValueError(f"`bits` must be 2, 4 or 8 for QuantizedLinear.from_gptq, got {bits!r}"
                             + (" (3-bit GPTQ packs codes across word boundaries, which no kernel here reads)"
                                if bits == 3 else ""))
        packed, scale, shift, perm = interop.from_gptq(qweight, qzeros, scales, nbit=bits,
                                                       zeros_minus_one=zeros_minus_one, g_idx=g_idx,
                                                       return_perm=True)
        return cls._from_checkpoint(packed, scale, shift, bias, perm, bits, group_size, layout, "GPTQ")

    @classmethod
    def from_awq(cls, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                 bias: Optional[torch.Tensor] = None, *, bits: int, group_size: Optional[int],
                 layout: str = "auto") -> "QuantizedLinear":
        """An AWQ GEMM (AutoAWQ ``WQLinear_GEMM``) layer: ``qweight [K, N/8]``,
        ``qzeros [G, N/8]``, ``scales [G, N]``, optional ``bias [N]``; ``bits`` must
        be 4. See :func:`triton_dequant.interop.from_awq` (nibble order, ``shift``).
        ``layout``: as in :meth:`from_linear` (``"auto"``: for ``qweight``'s device)."""
        if bits != 4 or isinstance(bits, bool):
            raise ValueError(f"`bits` must be 4 for AWQ (its nibble order is defined for 4 bits), got {bits!r}")
        packed, scale, shift = interop.from_awq(qweight, qzeros, scales, nbit=4, packed_dim=0)
        return cls._from_checkpoint(packed, scale, shift, bias, None, bits, group_size, layout, "AWQ")

    @classmethod
    def _from_checkpoint(cls, packed, scale, shift, bias, perm, bits, group_size, layout, fmt):
        K, N = packed.shape[0] * (_WIDTH // bits), packed.shape[1]
        G = scale.shape[0]
        want = K // G
        if group_size in (None, -1):
            if G != 1:
                raise ValueError(f"`group_size` {group_size} means per channel, but `scales` has {G} groups")
        elif group_size != want:
            raise ValueError(f"`group_size` ({group_size!r}) does not match the {fmt} tensors: K={K} in {G} "
                             f"groups of {want}")
        layout = _pick_layout(layout, bits, group_size, K, packed.device)
        mod = cls(K, N, bias is not None, nbit=bits, group_size=group_size, signed=False, layout=layout,
                  scale_dtype=scale.dtype, act_order=perm is not None, device="meta")
        return mod._set(packed, scale, shift, bias, perm)

    # --- use --------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in_features]`` -> ``[..., out_features]`` of ``x.dtype``
        (fp16/bf16 on a GPU; fp16/bf16/fp32 on the CPU, as ops.linear accepts).
        The bias (rounded to ``x.dtype``, as an ``nn.Linear`` of that dtype holds it)
        is added to the fp32 sums inside the op: one rounding, as ``nn.Linear``'s
        ``addmm``. No host sync, no data-dependent shapes."""
        if self.perm is not None:
            x = x.index_select(-1, self.perm)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return self._lay.linear(x, self.qweight, self.scale, self.shift, self.nbit, self._group, self.signed, bias)

    def dequantized_weight(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The ``[out_features, in_features]`` weight that ``forward`` multiplies by for
        ``x`` of ``dtype`` (default ``scale.dtype``): ``scale`` and ``shift`` rounded to
        ``dtype``, then ``scale * q + shift`` rounded once (exact reference), in the
        input order of the layer (an act-order ``perm`` undone)."""
        dtype = self.scale.dtype if dtype is None else dtype
        K, N = self.in_features, self.out_features
        plain, scale, shift = self._lay.to_plain(self.qweight, self.scale, self.shift, self.nbit, K, N)
        # whole groups of rows at a time: the exact reference holds ~10 float64 temporaries
        g, per = self._group, _WIDTH // self.nbit
        unit = per if g == K else g  # per channel: any whole words; per group: whole groups
        rows = max(1, _BLOCK // (N * unit)) * unit

        def block(k):
            s, h = (scale, shift) if g == K else (scale[k // g:(k + rows) // g], shift[k // g:(k + rows) // g])
            return ref.linear_weight(plain[k // per:(k + rows) // per], s, h, self.nbit, dtype=dtype,
                                     group_size=min(g, rows), packed_dim=0, signed=self.signed)
        w = torch.cat([block(k) for k in range(0, K, rows)])  # [K, N], rows in stored order
        if self.perm is not None:
            w = torch.empty_like(w).index_copy_(0, self.perm.long(), w)
        return w.t().contiguous()

    def to_layout(self, layout: str) -> "QuantizedLinear":
        """Convert the stored codes to ``layout`` in place and return ``self`` (as
        ``nn.Module.to``). ``layout`` as in the constructor; ``"auto"`` is
        :func:`auto_layout` for the device the layer is on now. Exact: scale, shift,
        bias, perm and :meth:`dequantized_weight` are unchanged."""
        K, N = self.in_features, self.out_features
        dev = self.qweight.device
        name = _resolve_layout(layout, self.nbit, _per_group(self._group, K), dev)
        if name == self.layout:
            return self
        new = LAYOUTS[name]
        if self.qweight.is_meta:
            q, s, h = new.empty(K, N, K // self._group, self.nbit, self.scale.dtype, dev)
        else:
            q, s, h = new.from_plain(*self._lay.to_plain(self.qweight, self.scale, self.shift, self.nbit, K, N),
                                     self.nbit)
        self.layout, self._lay = name, new
        self.qweight, self.scale, self.shift = q, s, h
        self.qconfig = self._qconfig(dev)
        return self

    def extra_repr(self) -> str:
        gs = "per channel" if self.group_size is None else self.group_size
        s = (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
             f"nbit={self.nbit}, group_size={gs}, signed={self.signed}, layout={self.layout}")
        return s + (", act_order=True" if self.perm is not None else "")

    # --- state dicts ----------------------------------------------------------------------------

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        cfg = state_dict.get(prefix + "qconfig")
        if cfg is not None:
            got = [int(v) for v in cfg.tolist()] if not cfg.is_meta else None
            want = self._qconfig().tolist()
            if got is not None and got != want:
                names = ("nbit", "group_size", "signed", "layout")

                def show(cfg):
                    d = dict(zip(names, cfg))
                    if len(cfg) == len(names):
                        lay = _BY_CODE.get(cfg[3])
                        d["layout"] = lay.name if lay is not None else f"unknown layout code {cfg[3]}"
                    return d
                hint = ""
                if len(got) == len(want) and got[:3] == want[:3]:
                    hint = (" (build the layer with that `layout`, or load into a layer of that layout and "
                            "convert it with to_layout())")
                raise ValueError(f"{prefix or 'QuantizedLinear'}: the state dict was quantized with "
                                 f"{show(got)}, this layer reads {show(want)}{hint}")
        if prefix + "qweight" in state_dict:
            # act order is a property of the checkpoint: adopt (or drop) its permutation
            p = state_dict.get(prefix + "perm")
            if p is not None and self.perm is None:
                self.perm = torch.empty(p.shape, dtype=torch.int32, device=self.qweight.device)
            elif p is None and self.perm is not None:
                self.perm = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def _skippable(linear: nn.Linear, nbit: int, group_size) -> Optional[str]:
    try:
        _group_size(group_size, linear.in_features, nbit)
    except ValueError as e:
        return str(e)
    return None


def quantize_model(model: nn.Module, nbit: int = 4, group_size: Optional[int] = 128, *, signed: bool = False,
                   filter_fn: Optional[Callable[[str, nn.Module], bool]] = None, layout: str = "auto",
                   scale_dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Replace ``model``'s ``nn.Linear`` layers by :class:`QuantizedLinear` in place
    (:meth:`QuantizedLinear.from_linear` with these arguments) and return the model.

    ``filter_fn(name, module) -> bool`` chooses layers (default: every
    ``nn.Linear`` except ``nn.MultiheadAttention``'s ``out_proj``, whose weight
    that module reads directly). A layer whose ``in_features`` ``group_size`` does
    not divide (or, per channel, is not a multiple of the codes per int32 word)
    is left as it is, with one warning naming the layers skipped. On the meta
    device (``with torch.device("meta"): model = ...``) the layers are empty, ready
    for ``load_state_dict(quantized_state_dict, assign=True)``. If ``model`` itself
    is an ``nn.Linear`` the new layer is returned.

    ``layout``: as in :class:`QuantizedLinear`; ``"auto"`` is decided per layer for
    the device of its weight (:func:`auto_layout`). Every chosen layer is checked
    before any is replaced: a layout that cannot hold a layer raises ``ValueError``
    naming it, and the model is left as it was."""
    _check_nbit(nbit)
    _resolve_layout(layout, nbit, None, None)  # the name and nbit, before any work
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"`filter_fn` must be a callable (name, module) -> bool, got {type(filter_fn).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
    kw = dict(nbit=nbit, group_size=group_size, signed=signed, scale_dtype=scale_dtype)
    chosen, skipped = [], []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or isinstance(mod, nn.modules.linear.NonDynamicallyQuantizableLinear):
            continue
        if filter_fn is not None and not filter_fn(name, mod):
            continue
        why = _skippable(mod, nbit, group_size)
        if why is None:
            try:
                chosen.append((name, _pick_layout(layout, nbit, group_size, mod.in_features, mod.weight.device)))
            except ValueError as e:
                raise ValueError(f"quantize_model: layer {name or '<model>'}: {e}") from None
        else:
            skipped.append(f"{name or '<model>'} ({why})")
    if skipped:
        warnings.warn(f"quantize_model: left {len(skipped)} nn.Linear layer(s) unquantized: " + "; ".join(skipped),
                      stacklevel=2)
    for name, lay in chosen:
        if name == "":
            return QuantizedLinear.from_linear(model, layout=lay, **kw)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, QuantizedLinear.from_linear(getattr(parent, child), layout=lay, **kw))
    return model
