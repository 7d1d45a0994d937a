"""Final answers of math solutions: extraction, canonical form, and equivalence checking.

- `extract_answer(text)`: the final answer a solution or model response states, or None: the
  content of the last ``\\boxed{...}`` (nested braces handled), else the last ``#### X``, else the
  last ``The answer is X``, else the last number. Plain numbers come back canonical (`canonical`).
- `canonical(answer)`: ``$1,000.`` -> ``1000``, ``18 dollars`` -> ``18``, ``2.50`` -> ``2.5``;
  anything that is not a plain number is only stripped of ``$`` delimiters and outer spaces.
- `is_equivalent(prediction, reference)`: True when two answers denote the same mathematical
  object. Plain numbers are compared exactly here (``1,000`` = ``1000.0``); anything else (LaTeX,
  fractions, percentages, intervals, sets, matrices, expressions) by `math-verify` in a worker
  process, so a pathological expression (``9^{9^{9^9}}``) cannot hang or exhaust the caller: the
  worker has an address-space limit and math-verify's own time limits, and the caller kills and
  replaces it when an answer takes longer than `timeout_s`, returning False. Safe from any thread.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+"
PLAIN_RE = re.compile(rf"^(?:{NUMBER})$")
FRACTION_RE = re.compile(r"^[-+]?\d+/\d+$")
UNITS_RE = re.compile(rf"^\\?\$?\s*({NUMBER})\s*(?:[A-Za-z]+\.?\s*)*$")
LAST_NUMBER_RE = re.compile(rf"(?<![\w.])({NUMBER})(?![\w])")
HASHES_RE = re.compile(r"####\s*([^\n]*)")
ANSWER_IS_RE = re.compile(r"answer is[:\s]*([^\n]*?)\s*(?:\.\s|\.?$)", re.IGNORECASE | re.MULTILINE)
MAX_CHARS = 1000  # longer answers are compared as text only
STARTUP_S = 120.0


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, ``\\boxed 5``) in `text`; None if none.

    Nested braces are balanced; escaped braces (``\\{``, ``\\}``) do not count.
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    head = start + (6 if text.startswith("\\boxed", start) else 5)
    after = text[head:]
    if not after.lstrip().startswith("{"):
        value = after.split("$")[0].strip() if after.startswith(" ") else ""
        return value or None
    i = head + len(after) - len(after.lstrip())
    depth = 0
    for j in range(i, len(text)):
        if text[j] in "{}" and text[j - 1] != "\\":
            depth += 1 if text[j] == "{" else -1
            if depth == 0:
                return text[i + 1:j]
    return None  # unbalanced


def canonical(answer: str) -> str:
    """A plain number's canonical text (no ``$``, commas, units, trailing zeros); other text stripped."""
    s = answer.strip().strip("$").strip()
    s = re.sub(r"^\\\$|\\\$$|^\$", "", s).strip().rstrip(".").strip()
    s = re.sub(r"\\(?:text|mathrm)\{\s*([A-Za-z ]*)\}", r"\1", s).strip()
    units = UNITS_RE.match(s)
    if units:
        s = units.group(1)
    if PLAIN_RE.match(s):
        value = Fraction(s.replace(",", ""))
        if value.denominator == 1:
            return str(value.numerator)
        return s.replace(",", "").rstrip("0").rstrip(".") if "." in s else s
    return s


def extract_answer(text: str) -> str | None:
    """The final answer stated in `text` (canonical when a plain number), or None (see the module docstring)."""
    for found in (last_boxed(text), _last(HASHES_RE, text), _last(ANSWER_IS_RE, text)):
        if found is not None and found.strip():
            return canonical(found)
    number = _last(LAST_NUMBER_RE, text)
    return canonical(number) if number is not None else None


def _last(pattern: re.Pattern, text: str) -> str | None:
    matches = pattern.findall(text)
    return matches[-1] if matches else None


def plain_number(answer: str) -> Fraction | None:
    """The value of a plain number (``-3``, ``1,000``, ``2.5``, ``3/4``, ``$18``, ``5 dollars``), else None."""
    s = canonical(answer)
    if PLAIN_RE.match(s):
        return Fraction(s.replace(",", ""))
    if FRACTION_RE.match(s) and not s.endswith("/0"):
        return Fraction(s)
    return None


def is_equivalent(prediction: str, reference: str, timeout_s: float = 3.0) -> bool:
    """Whether `prediction` and `reference` are the same answer (see the module docstring); never hangs."""
    p, r = _unwrap(prediction), _unwrap(reference)
    if not p or not r:
        return False
    if p == r or canonical(p) == canonical(r):
        return True
    a, b = plain_number(p), plain_number(r)
    if a is not None and b is not None and (a == b or (a.denominator == 1 and b.denominator == 1)):
        return a == b
    if len(p) > MAX_CHARS or len(r) > MAX_CHARS:
        return False
    return _VERIFIER.equal(p, r, timeout_s)


def _unwrap(answer: str) -> str:
    """`answer` without outer spaces, ``$`` delimiters and a ``\\boxed{}`` around the whole of it."""
    s = answer.strip()
    while s.startswith("$") and s.endswith("$") and len(s) > 1:
        s = s[1:-1].strip()
    if s.startswith("\\boxed{") and last_boxed(s) is not None and s.endswith("}"):
        s = last_boxed(s).strip()
    return s


# ---- the math-verify worker -----------------------------------------------------------------------
class _Verifier:
    """One math-verify worker process per parent process, used under a lock; restarted after a timeout."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._owner = os.getpid()
        self._buffer = b""

    def equal(self, prediction: str, reference: str, timeout_s: float) -> bool:
        with self._lock:
            if self._owner != os.getpid():  # a forked child: the worker's pipes belong to the parent
                self._proc, self._owner, self._buffer = None, os.getpid(), b""
            try:
                proc = self._proc or self._start()
                proc.stdin.write((json.dumps([prediction, reference]) + "\n").encode())
                proc.stdin.flush()
                reply = self._readline(proc, timeout_s)
            except OSError:
                reply = None
            if reply is None:
                self.close()
                return False
            return reply.strip() == b"true"

    def _start(self) -> subprocess.Popen:
        src = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from rlhfscale.tasks.math_answers import serve; serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self._buffer = b""
        if self._readline(self._proc, STARTUP_S) != b"ready":
            self.close()
            raise RuntimeError("the math-verify worker did not start (is math-verify installed?)")
        return self._proc

    def _readline(self, proc: subprocess.Popen, timeout_s: float) -> bytes | None:
        """One line from the worker, or None when it takes longer than `timeout_s` or died."""
        fd = proc.stdout.fileno()
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([fd], [], [], timeout_s)
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for pipe in (self._proc.stdin, self._proc.stdout):
                pipe.close()
        self._proc, self._buffer = None, b""


_VERIFIER = _Verifier()
atexit.register(_VERIFIER.close)


def serve() -> None:
    """The worker's main loop: ``[prediction, reference]`` JSON lines in, ``true``/``false`` lines out."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a 10^(10^10) fails, not the machine
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything the libraries print goes to stderr, not into the replies
    from math_verify import parse, verify  # noqa: F401 - imported once, before "ready"

    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            prediction, reference = json.loads(line)
            gold = parse(f"\\boxed{{{reference}}}", parsing_timeout=1)
            pred = parse(f"\\boxed{{{prediction}}}", parsing_timeout=1)
            equal = bool(gold) and bool(pred) and verify(gold, pred, timeout_seconds=1)
        except BaseException:  # noqa: BLE001 - MemoryError, timeouts, parser bugs: not equal
            equal = False
        out.write("true\n" if equal else "false\n")
        out.flush()
