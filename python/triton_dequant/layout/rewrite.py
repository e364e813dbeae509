"""The TTGIR rewrite: move the loads and stores around ``tl.dequantize`` results
into the layouts that make Triton's layout conversions vanish.

:func:`rewrite_ttgir` is a pure text transformation (see the package docstring
for the two cases, *leaving* and *entering* the tile). Its output still needs
Triton's ``remove-layout-conversions`` (run by :mod:`.hook`) to fold the
conversions it inserts (of pointers, masks, and between the old and new layouts).
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

from . import algebra
from .mlir import (Aliases, Body, Op, TensorType, base, elem_bytes, encoding_aliases, is_elementwise,
                   operands_and_attrs, pointee, split_top)

MARKER = '"// triton_dequant'  # how a tl.dequantize asm block's body starts (ptx.MARKER, quoted)
IR_MARKER = "tt.elementwise_inline_asm " + MARKER  # a module without it is never touched


def _is_dequant_asm(op: Op) -> bool:
    return op.name == "tt.elementwise_inline_asm" and MARKER in op.body


class _MemoryOp:
    """The parts of a ``tt.load`` / ``tt.store`` line."""

    def __init__(self, args: List[str], attrs: str, ptr_ty: TensorType, elem: str):
        self.args, self.attrs, self.ptr_ty, self.elem = args, attrs, ptr_ty, elem

    @staticmethod
    def parse(op: Op) -> Optional["_MemoryOp"]:
        head = split_top(op.body, " : ")
        if len(head) != 2:
            return None
        args, attrs = operands_and_attrs(head[0])
        ptr_ty = TensorType.parse(head[1].strip())
        if ptr_ty is None or not args or pointee(ptr_ty.elem) is None:
            return None
        return _MemoryOp(args, attrs, ptr_ty, pointee(ptr_ty.elem))

    @property
    def value_ty(self) -> TensorType:
        return self.ptr_ty.with_(elem=self.elem)


class Rewriter:
    """One rewrite of one module text: analysis, planned edits, rendering."""

    def __init__(self, text: str, policy: str):
        self.text, self.policy = text, policy
        self.lines = text.split("\n")
        self.aliases = Aliases.of(self.lines)
        self.body = Body(self.lines)
        self.layouts, self.entry = self._mark_family()
        self.names = {a for enc in self.layouts for a in encoding_aliases(enc) if a in self.aliases}
        self._taken = set(re.findall(r"%__tdq_\d+", text))
        self._counter = 0
        self.insert_before: Dict[int, List[str]] = {}
        self.insert_after: Dict[int, List[str]] = {}
        self.replace: Dict[int, Optional[str]] = {}  # line -> new text (None: delete)
        self.edits: List[str] = []

    # --- analysis ---------------------------------------------------------------------

    def _mark_family(self) -> Tuple[set, set]:
        """Mark the dequantize family: values computed from a marked asm block through
        views (join, reshape, trans), elementwise ops and reductions, not through
        conversions (their targets are the layouts of others). Returns (the family's
        layouts: the *dequantized layouts*, the layouts the asm blocks' operands
        come in: the packed words and scale/shift)."""
        layouts, entry = set(), set()
        for op in self.body.ops:
            defs = self.body.definitions(op)
            if _is_dequant_asm(op):
                op.dq = True
                entry.update(d.result_type.encoding for d in defs if d is not None and d.result_type is not None)
            elif op.results and op.name != "ttg.convert_layout" and (is_elementwise(op.name)
                                                                     or op.name == "tt.reduce"):
                op.dq = any(d is not None and d.dq for d in defs)
                if op.dq and op.result_type is not None:
                    layouts.add(op.result_type.encoding)
        return layouts, entry

    def family(self, enc: str) -> bool:
        """``enc`` is a dequantized layout, or built on one (a slice of it)."""
        return enc in self.layouts or bool(set(encoding_aliases(enc)) & self.names)

    def cvt_types(self, cvt: Op) -> Tuple[Optional[TensorType], Optional[TensorType]]:
        tys = split_top(cvt.type_section(), " -> ")
        if len(tys) != 2:
            return None, None
        return TensorType.parse(tys[0]), TensorType.parse(tys[1])

    def connected_memory_ops(self, cvt: Op, shape: List[int]) -> List[Op]:
        """The loads and stores of ``shape`` that the value leaving the tile through
        ``cvt`` meets through elementwise ops (not derived from the tile itself)."""
        def same_shape(o: Op) -> bool:
            return o.result_type is not None and o.result_type.shape == shape

        found, work, seen = [], [cvt], set()
        while work:
            cur = work.pop()
            if cur.index in seen:
                continue
            seen.add(cur.index)
            if cur.name == "tt.load":
                found.append(cur)
                continue
            for u in self.body.users(cur):
                if u.name == "tt.store":
                    mo = _MemoryOp.parse(u)
                    if (mo and len(mo.args) > 1 and self.body.definition(u, mo.args[1]) is cur
                            and mo.ptr_ty.shape == shape):
                        found.append(u)
                elif is_elementwise(u.name) and same_shape(u) and not u.dq:
                    work.append(u)
                    for d in self.body.definitions(u):
                        if (d is not None and d.index not in seen and same_shape(d) and not d.dq
                                and (d.name == "tt.load" or is_elementwise(d.name))):
                            work.append(d)
        return found

    def feeding_asm_blocks(self, cvt: Op) -> List[Op]:
        """The dequantize asm blocks the value converted by ``cvt`` derives from."""
        asms, work, seen = [], [self.body.definition(cvt, cvt.operands[0])], set()
        while work:
            d = work.pop()
            if d is None or d.index in seen or not d.dq:
                continue
            seen.add(d.index)
            if _is_dequant_asm(d):
                asms.append(d)
            else:
                work.extend(self.body.definitions(d))
        return asms

    # --- edits ----------------------------------------------------------------------------

    def fresh(self) -> str:
        while True:
            name = f"%__tdq_{self._counter}"
            self._counter += 1
            if name not in self._taken:
                return name

    def convert(self, indent: str, src: str, ty: TensorType, enc: str, loc: str) -> Tuple[str, str]:
        """A new ``ttg.convert_layout`` of ``src`` (of type ``ty``) to ``enc``: (its name, its line)."""
        name = self.fresh()
        return name, f"{indent}{name} = ttg.convert_layout {src} : {ty} -> {ty.with_(encoding=enc)}{loc}"

    def retarget_store(self, op: Op, enc: str) -> bool:
        """tt.store %p, %v, %m : P<B>  ->  tt.store cvt(%p), cvt(%v), cvt(%m) : P<enc>."""
        mo = _MemoryOp.parse(op)
        if mo is None or len(mo.args) < 2 or op.index in self.replace:
            return False
        value, val_ty, new_lines = mo.args[1], mo.value_ty, []
        d = self.body.definition(op, value)
        if d is not None and d.name == "ttg.convert_layout" and d.operands:
            src_ty, _ = self.cvt_types(d)
            if src_ty is not None and src_ty.encoding in (enc, self.aliases.name_of(enc)):
                value, val_ty = d.operands[0], src_ty  # skip the conversion back and forth
        if val_ty.encoding != enc:
            value, ln = self.convert(op.indent, value, val_ty, enc, op.loc)
            new_lines.append(ln)
        ptr, ln = self.convert(op.indent, mo.args[0], mo.ptr_ty, enc, op.loc)
        new_lines.append(ln)
        new_args = [ptr, value]
        if len(mo.args) > 2:
            mask, ln = self.convert(op.indent, mo.args[2], mo.ptr_ty.with_(elem="i1"), enc, op.loc)
            new_lines.append(ln)
            new_args.append(mask)
        self.insert_before.setdefault(op.index, []).extend(new_lines)
        self.replace[op.index] = (f"{op.indent}tt.store {', '.join(new_args)}{mo.attrs} : "
                                  f"{mo.ptr_ty.with_(encoding=enc)}{op.loc}")
        self.edits.append(f"store line {op.index + 1}: {mo.ptr_ty.encoding} -> {enc}")
        return True

    def retarget_load(self, ld: Op, enc: str, result: Optional[str] = None) -> bool:
        """%L = tt.load %p, %m, %o : P<B>  ->  %t = tt.load cvt(%p), cvt(%m), cvt(%o) : P<enc>;
        %L = convert %t to B (or, with ``result``, name the new load ``result``)."""
        mo = _MemoryOp.parse(ld)
        if mo is None or ld.index in self.replace or len(ld.results) != 1:
            return False
        new_lines, new_args = [], []
        for k, a in enumerate(mo.args):  # pointer, mask, other
            ty = mo.ptr_ty if k == 0 else mo.ptr_ty.with_(elem="i1") if k == 1 else mo.value_ty
            name, ln = self.convert(ld.indent, a, ty, enc, ld.loc)
            new_lines.append(ln)
            new_args.append(name)
        self.insert_before.setdefault(ld.index, []).extend(new_lines)
        tmp = result or self.fresh()
        self.replace[ld.index] = (f"{ld.indent}{tmp} = tt.load {', '.join(new_args)}{mo.attrs} : "
                                  f"{mo.ptr_ty.with_(encoding=enc)}{ld.loc}")
        if result is None:
            self.insert_after.setdefault(ld.index, []).append(
                f"{ld.indent}{ld.results[0]} = ttg.convert_layout {tmp} : {mo.value_ty.with_(encoding=enc)} -> "
                f"{mo.value_ty}{ld.loc}")
        self.edits.append(f"load line {ld.index + 1}: {mo.ptr_ty.encoding} -> {enc}")
        return True

    def narrow_packed_loads(self, exit_cvt: Op, dst_ty: TensorType) -> None:
        """Retarget the loads of packed words feeding the dequantize asm blocks
        behind ``exit_cvt`` so that the unpacked tile is born in ``dst_ty``'s layout."""
        for asm in self.feeding_asm_blocks(exit_cvt):
            per = sum(asm.counts)
            words = self.body.definition(asm, asm.operands[0]) if asm.operands else None
            if words is not None and words.name == "ttg.convert_layout":  # Triton moved the words already
                words = self.body.definition(words, words.operands[0])
            if words is None or words.name != "tt.load" or words.result_type is None:
                continue
            in_shape = words.result_type.shape
            axes = [k for k, (i, o) in enumerate(zip(in_shape, dst_ty.shape)) if o == i * per and o != i]
            if len(in_shape) != len(dst_ty.shape) or len(axes) != 1:
                continue
            enc = algebra.narrow_layout(dst_ty.encoding, axes[0], per, self.aliases)
            if enc is not None:
                self.retarget_load(words, enc)

    # --- the two cases ----------------------------------------------------------------------

    def leave_tile(self, cvt: Op, src_ty: TensorType, dst_ty: TensorType) -> None:
        """A dequantized value leaves its layout A for B (the layout of the loads and
        stores it meets). Move those loads and stores to A, if stores from A leave no
        gaps in a warp's writes (or the policy is "owned"); else, with the policy
        "narrow", load the packed words narrower so that the tile is born in B."""
        a, shape = src_ty.encoding, dst_ty.shape
        plans = []
        for m in self.connected_memory_ops(cvt, shape):
            mo = _MemoryOp.parse(m)
            if mo is not None and m.index not in self.replace:
                plans.append((m, algebra.store_order(a, mo.ptr_ty.encoding, len(shape), self.aliases), mo))
        stores = [(m, enc, mo) for m, enc, mo in plans if m.name == "tt.store"]
        if self.policy == "owned" or all(
                algebra.gap_free(enc, shape, algebra.contiguous_dim(mo.ptr_ty.encoding, len(shape), self.aliases),
                                 elem_bytes(mo.elem), self.aliases) for _, enc, mo in stores):
            for m, enc, _ in plans:
                (self.retarget_store if m.name == "tt.store" else self.retarget_load)(m, enc)
        elif self.policy == "narrow" and stores:
            self.narrow_packed_loads(cvt, dst_ty)

    def enter_tile(self, cvt: Op, dst_ty: TensorType) -> None:
        """A load converted into a dequantized layout (or a slice of one, e.g. the
        activations ``x[:, None]`` of a GEMV), or into the layout Triton chose for
        the packed words: issue the load in that layout directly."""
        ld = self.body.definition(cvt, cvt.operands[0])
        if (ld is None or ld.name != "tt.load" or len(self.body.users(ld)) != 1
                or sum(base(u) == ld.results[0] for u in cvt.operands) != 1):
            return
        if self.retarget_load(ld, dst_ty.encoding, result=cvt.results[0]):
            self.replace[cvt.index] = None

    def run(self) -> Tuple[str, List[str]]:
        if not self.layouts:
            return self.text, []
        for op in self.body.ops:
            if op.name != "ttg.convert_layout" or not op.results or not op.operands:
                continue
            src_ty, dst_ty = self.cvt_types(op)
            if src_ty is None or dst_ty is None or src_ty.shape != dst_ty.shape:
                continue
            if self.family(src_ty.encoding) and not self.family(dst_ty.encoding):
                self.leave_tile(op, src_ty, dst_ty)
            elif (self.family(dst_ty.encoding) or dst_ty.encoding in self.entry) and not self.family(src_ty.encoding):
                self.enter_tile(op, dst_ty)
        if not self.edits:
            return self.text, []
        return self.render(), self.edits

    def render(self) -> str:
        out: List[str] = []
        for i, line in enumerate(self.lines):
            out.extend(self.insert_before.get(i, []))
            if i not in self.replace:
                out.append(line)
            elif self.replace[i] is not None:
                out.append(self.replace[i])
            out.extend(self.insert_after.get(i, []))
        return "\n".join(out)


def rewrite_ttgir(text: str, policy: Optional[str] = None) -> Tuple[str, List[str]]:
    """Rewrite the loads/stores around ``tl.dequantize`` results in a TTGIR module
    text. Returns ``(new text, list of edits)``; the new text still needs
    ``remove-layout-conversions`` to fold the inserted conversions. ``policy``:
    the store policy (default: the current one, see ``layout.set_store_policy``)."""
    if IR_MARKER not in text:
        return text, []
    if policy is None:
        from .. import state
        policy = state.switches()[2]
    return Rewriter(text, policy).run()
