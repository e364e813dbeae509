"""A small parser of Triton's printed MLIR (TTGIR) text, enough for the layout step.

The Python bindings of Triton 3.6 can neither create ``ttg.convert_layout`` ops nor
retype values, so the step edits the printed module (``mod.str()``) and parses it
back. This module reads that text: SSA names with MLIR region scoping, ``%v#k``
results, tensor types with nested encodings, string literals (asm bodies hold
``{``, ``(`` and ``%``), trailing ``loc(...)`` and the ``#alias = ...`` attribute
definitions at the top of a module. It writes nothing; :mod:`.rewrite` does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

_OPEN, _CLOSE = "<([{", ">)]}"
_NAME = r"%[A-Za-z0-9_$.\-]+"
_USE_RE = re.compile(r"(%[A-Za-z0-9_$.\-]+)(?:#(\d+))?")
_OP_RE = re.compile(r"^(\s*)(?:(%[^=]+?)\s*=\s*)?(\"?[A-Za-z_][\w.]*\"?)(.*)$")
_OPERANDS_RE = re.compile(r"^\s*(" + _NAME + r"(?:#\d+)?(?:\s*,\s*" + _NAME + r"(?:#\d+)?)*)(.*)$", re.S)

# ops through which a value still "is" the dequantized tile (same data, new view or elementwise)
VIEW_OPS = frozenset({"tt.join", "tt.reshape", "tt.trans", "ttg.convert_layout", "tt.bitcast", "tt.fp_to_fp",
                      "tt.elementwise_inline_asm", "tt.extern_elementwise", "tt.clampf", "tt.precise_sqrt",
                      "tt.precise_divf", "tt.mulhiui", "arith.select"})


def is_elementwise(name: str) -> bool:
    """Views and elementwise ops (``math.*``, ``arith.*`` but constants)."""
    return name in VIEW_OPS or name.startswith("math.") or (name.startswith("arith.") and name != "arith.constant")


# --- lexical helpers -------------------------------------------------------------------

def mask_strings(s: str) -> str:
    """``s`` with the contents of string literals replaced by spaces (same length)."""
    out, i, n = [], 0, len(s)
    while i < n:
        c = s[i]
        if c == '"':
            j = i + 1
            while j < n and s[j] != '"':
                j += 2 if s[j] == "\\" else 1
            out.append('"' + " " * (min(j, n) - i - 1) + ('"' if j < n else ""))
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)[:n]


def split_top(s: str, sep: str) -> List[str]:
    """Split ``s`` at ``sep`` occurring outside brackets and string literals."""
    m = mask_strings(s)
    parts, depth, start, i = [], 0, 0, 0
    while i < len(m):
        c = m[i]
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE and not (c == ">" and i > 0 and m[i - 1] == "-"):  # (not the arrow of `->`)
            depth -= 1
        elif depth == 0 and m.startswith(sep, i):
            parts.append(s[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(s[start:])
    return parts


def split_loc(line: str) -> Tuple[str, str]:
    """``(op text, ' loc(...)')`` for a line ending in a location."""
    m = mask_strings(line)
    end = len(m.rstrip())
    if not m[:end].endswith(")"):
        return line, ""
    depth = 0
    for i in range(end - 1, -1, -1):
        if m[i] == ")":
            depth += 1
        elif m[i] == "(":
            depth -= 1
            if depth == 0:
                if m[max(0, i - 4):i] == " loc" or m[max(0, i - 3):i] == "loc":
                    k = i - 3
                    while k > 0 and m[k - 1] == " ":
                        k -= 1
                    return line[:k], line[k:end]
                return line, ""
    return line, ""


def opens_region(code: str) -> bool:
    return mask_strings(code).rstrip().endswith("{")


def int_list(s: str) -> List[int]:
    return [int(v) for v in re.findall(r"-?\d+", s)]


def base(use: str) -> str:
    """``'%y#3'`` -> ``'%y'``."""
    return use.split("#", 1)[0]


def operands_and_attrs(s: str) -> Tuple[List[str], str]:
    """``'%a, %b, %c cacheModifier = cs'`` -> ``(['%a', '%b', '%c'], ' cacheModifier = cs')``."""
    m = _OPERANDS_RE.match(s)
    if not m:
        return [], ""
    args = [a.strip() for a in m.group(1).split(",")]
    rest = m.group(2).rstrip()
    return args, (" " + rest.strip()) if rest.strip() else ""


# --- types and attribute aliases -----------------------------------------------------------

@dataclass
class TensorType:
    """``tensor<64x128xf16, #blocked1>``: shape, element type, encoding (as written)."""
    shape: List[int]
    elem: str
    encoding: str

    @staticmethod
    def parse(s: str) -> Optional["TensorType"]:
        s = s.strip()
        if not (s.startswith("tensor<") and s.endswith(">")):
            return None
        parts = split_top(s[len("tensor<"):-1], ",")
        if len(parts) != 2:
            return None
        m = re.match(r"^((?:\d+x)*)(.+)$", parts[0].strip())
        if not m:
            return None
        dims = [int(d) for d in m.group(1).split("x") if d]
        return TensorType(dims, m.group(2).strip(), parts[1].strip())

    def with_(self, elem: Optional[str] = None, encoding: Optional[str] = None) -> "TensorType":
        return TensorType(list(self.shape), elem or self.elem, encoding or self.encoding)

    def __str__(self) -> str:
        dims = "".join(f"{d}x" for d in self.shape)
        return f"tensor<{dims}{self.elem}, {self.encoding}>"


def tensor_type_spans(s: str) -> List[Tuple[int, int]]:
    """Spans of the ``tensor<...>`` types in ``s``."""
    m = mask_strings(s)
    spans, i = [], 0
    while True:
        i = m.find("tensor<", i)
        if i < 0:
            return spans
        depth, j = 0, i + len("tensor")
        while j < len(m):
            if m[j] == "<":
                depth += 1
            elif m[j] == ">" and m[j - 1] != "-":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        spans.append((i, j + 1))
        i = j + 1


def pointee(ptr_elem: str) -> Optional[str]:
    """``'!tt.ptr<f16>'`` -> ``'f16'``."""
    m = re.fullmatch(r"!tt\.ptr<([^,<>]+)(?:,\s*\d+)?>", ptr_elem.strip())
    return m.group(1).strip() if m else None


def elem_bytes(elem: str) -> int:
    m = re.fullmatch(r"[a-z]*?(\d+)", elem.strip())
    bits = int(m.group(1)) if m else 32
    return max(1, bits // 8)


class Aliases(dict):
    """``#name -> attribute text``: the ``#name = <attribute>`` definitions at the top of a module."""

    @classmethod
    def of(cls, lines: List[str]) -> "Aliases":
        out = cls()
        for line in lines:
            m = re.match(r"^(#[A-Za-z_][\w]*) = (.*)$", line)
            if m:
                out[m.group(1)] = m.group(2).strip()
            elif line.startswith("module"):
                break
        return out

    def resolve(self, enc: str) -> str:
        """The attribute text of an encoding (itself when it is written inline)."""
        return self.get(enc, enc)

    def name_of(self, enc: str) -> str:
        """The alias whose definition is ``enc`` (``enc`` itself when there is none)."""
        for k, v in self.items():
            if v == enc:
                return k
        return enc


def encoding_aliases(enc: str) -> List[str]:
    """The ``#alias`` names an encoding text mentions (itself or a parent)."""
    return re.findall(r"#[A-Za-z_][\w]*", enc)


# --- ops -------------------------------------------------------------------------------------

@dataclass
class Op:
    index: int  # line number in the module text
    indent: str
    results: List[str]  # SSA names (with '%'), one per result group
    counts: List[int]  # number of results per group (``%y:8`` -> 8)
    name: str
    body: str  # text after the op name, without the location
    loc: str
    operands: List[str] = field(default_factory=list)  # uses, e.g. '%y#3'
    dq: bool = False  # derives from a tl.dequantize result (set by the rewriter)
    result_type: Optional[TensorType] = None

    def type_section(self) -> str:
        parts = split_top(self.body, " : ")
        return parts[-1] if len(parts) > 1 else ""


def parse_op(index: int, line: str) -> Optional[Op]:
    """One op line -> :class:`Op` (None for closing braces, block labels, comments, aliases)."""
    text, loc = split_loc(line)
    m = _OP_RE.match(text)
    if not m or text.strip().startswith(("}", "^", "#", "//")):
        return None
    indent, res, name, body = m.group(1), m.group(2), m.group(3), m.group(4)
    results, counts = [], []
    if res:
        for r in res.split(","):
            mm = re.fullmatch(r"(%[A-Za-z0-9_$.\-]+)(?::(\d+))?", r.strip())
            if not mm:
                return None
            results.append(mm.group(1))
            counts.append(int(mm.group(2) or 1))
    op = Op(index, indent, results, counts, name.strip('"'), body, loc)
    op.operands = [u.group(0) for u in _USE_RE.finditer(mask_strings(body))]
    ts = op.type_section()
    spans = tensor_type_spans(ts)
    if spans and results:
        op.result_type = TensorType.parse(ts[spans[-1][0]:spans[-1][1]])
    return op


class Body:
    """The ops of a module text with their def-use relations under MLIR region
    scoping (sibling regions may reuse SSA names)."""

    def __init__(self, lines: List[str]):
        stack: List[Dict[str, Op]] = [{}]
        self._scopes: Dict[int, Tuple[Dict[str, Op], ...]] = {}
        self.ops: List[Op] = []
        for i, line in enumerate(lines):
            stripped = line.strip()
            if not stripped or stripped.startswith(("#", "//")):
                continue
            code = split_loc(line)[0]
            if code.strip().startswith("}"):
                if len(stack) > 1:
                    stack.pop()
                if opens_region(code):  # `} else {`
                    stack.append({})
                continue
            if code.strip().startswith("^"):
                continue
            op = parse_op(i, line)
            if op is not None:
                self._scopes[i] = tuple(stack)
                self.ops.append(op)
                for r in op.results:
                    stack[-1][r] = op
            if opens_region(code):
                stack.append({})
        self._users: Dict[int, List[Op]] = {}
        for op in self.ops:
            for u in op.operands:
                d = self.definition(op, u)
                if d is not None and op not in self._users.setdefault(d.index, []):
                    self._users[d.index].append(op)

    def definition(self, op: Op, use: str) -> Optional[Op]:
        """The op defining ``use`` as seen from ``op``."""
        name = base(use)
        for scope in reversed(self._scopes[op.index]):
            if name in scope:
                return scope[name]
        return None

    def definitions(self, op: Op) -> List[Optional[Op]]:
        return [self.definition(op, u) for u in op.operands]

    def users(self, op: Op) -> List[Op]:
        """The ops using one of ``op``'s results, in text order."""
        return self._users.get(op.index, [])
