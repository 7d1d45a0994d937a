"""The attention of one decoding step over a `kv_cache.KVCache` layer: a fused C++ kernel on a CPU, eager ops elsewhere.

For query head h of row b and its key/value head g, over the cache columns c written so far (t of them):

    out = softmax(q · K_cᵀ / √Dh + mask_c) V_c

Eagerly that is a batched matmul per product: B·H products of [1, Dh] by [Dh, C]. On a CPU each costs a
fixed 0.1-0.2 µs, and the batched bf16 matmul is slower still: at `micro` (256 rows) the two products took a
third of a bf16 sampler's time, and they read every column of the cache, written or not. The kernel
(`csrc/decode_attention.cpp`) does the whole step in one pass over the t written columns. Its roundings are
the eager step's: a bf16 cache gets the eager numerics, a float32 one the same math summed in another order.

Keys are stored transposed so that both of the kernel's products run along contiguous rows: for the eager ops
[Dh, C] per head, for the kernel in tiles of `TILE` columns, [C / TILE, Dh, TILE] (`key_layout`), so that the t
columns it reads sit together in memory rather than in Dh rows strided by C (`tiled_keys` and `key_columns`
convert).

The kernel (built in one extension with the row ops of `models.kernels`, `csrc/row_ops.cpp`, and the sampler's
draw, `csrc/sample.cpp`) is compiled on first use by `torch.utils.cpp_extension` (a C++ compiler and ninja; about
15 s, once per machine: the build is cached under torch's extensions folder, `TORCH_EXTENSIONS_DIR`). `make install`
builds it. Where it cannot be built, decoding runs the eager ops (`fused_available` says which).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from rlhfscale.errors import BadInput

CSRC = Path(__file__).with_name("csrc")
# the attention; RMSNorm and RoPE (`kernels`); the sampler's draw (`rollout.sampler.next_tokens`); the attention of
# whole sequences, with its backward (`seq_attention`); the backwards of training's row ops (`train_ops`)
SOURCES = [CSRC / "decode_attention.cpp", CSRC / "row_ops.cpp", CSRC / "sample.cpp", CSRC / "seq_attention.cpp",
           CSRC / "train_ops.cpp"]
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno"]
ENV = "RLHFSCALE_FUSED_ATTENTION"  # 0: the eager ops even where the extension builds (attention, row ops, draw)
TILE = 16  # key columns per tile in the fused kernel's cache layout


def build_name() -> str:
    """The build's name, tagged with this CPU's features and the sources' text (headers included, which torch's
    own check of the sources leaves out): a build for one CPU (-march=native) is never loaded on another that
    shares the extensions folder (a home directory on a cluster's shared disk), nor one of other sources."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    digest = hashlib.sha1(flags.encode())
    for path in sorted(CSRC.iterdir()):
        digest.update(path.read_bytes())
    return f"rlhfscale_decode_attention_{digest.hexdigest()[:10]}"


@functools.cache
def fused_available() -> bool:
    """Whether the fused CPU kernel is loaded (building it the first time on this machine; False where it
    cannot be built, with a warning saying why). RLHFSCALE_FUSED_ATTENTION=0 turns it off; a value other
    than 0 or 1 is refused."""
    switch = os.environ.get(ENV, "1")
    if switch not in ("0", "1"):
        raise BadInput(f"environment variable {ENV}: expected 0 (eager ops) or 1 (the fused kernel), found {switch!r}")
    if switch == "0":
        return False
    try:
        from torch.utils.cpp_extension import load

        with _ninja_on_path():
            load(name=build_name(), sources=[str(path) for path in SOURCES], extra_cflags=FLAGS,
                 extra_ldflags=["-fopenmp"], is_python_module=False)
    except Exception as error:  # no compiler or ninja: the eager attention does the same work
        warnings.warn(f"decode attention: the fused CPU kernel could not be built ({error}); using eager ops",
                      stacklevel=2)
        return False
    return True


@contextmanager
def _ninja_on_path() -> Iterator[None]:
    """PATH with the `ninja` package's binary folder first, for the build (the venv's bin may not be on PATH)."""
    path = os.environ.get("PATH", "")
    try:
        import ninja

        os.environ["PATH"] = os.pathsep.join((ninja.BIN_DIR, path))
    except ImportError:
        pass
    try:
        yield
    finally:
        os.environ["PATH"] = path


def uses_fused(device: torch.device) -> bool:
    """Whether a decoding step on `device` runs the fused kernel (a CPU, and the kernel built) or the eager ops."""
    return torch.device(device).type == "cpu" and fused_available()


def key_layout(device: torch.device) -> str:
    """How a cache on `device` stores its keys: "tiled" ([..., C / TILE, Dh, TILE], for the fused kernel: C a
    multiple of TILE) or "columns" ([..., Dh, C], for the eager ops)."""
    return "tiled" if uses_fused(device) else "columns"


def tiled_keys(kt: torch.Tensor) -> torch.Tensor:
    """Keys [..., Dh, C] (C a multiple of TILE) in tiles, [..., C / TILE, Dh, TILE] (a copy)."""
    *lead, Dh, C = kt.shape
    return kt.reshape(*lead, Dh, C // TILE, TILE).transpose(-3, -2).contiguous()


def key_columns(tiles: torch.Tensor) -> torch.Tensor:
    """Tiled keys [..., C / TILE, Dh, TILE] as columns, [..., Dh, C] (a copy)."""
    return tiles.transpose(-3, -2).flatten(-2)


def store_keys(kt_cache: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, k: torch.Tensor) -> None:
    """Write keys k [N, Hkv, Dh] into columns cols [N] of rows rows [N] of a cache layer's keys, tiled
    [B, Hkv, C / TILE, Dh, TILE] or columns [B, Hkv, Dh, C]."""
    if kt_cache.dim() == 5:
        kt_cache[rows, :, cols // TILE, :, cols % TILE] = k
    else:
        kt_cache[rows, :, :, cols] = k


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kt_cache: torch.Tensor, v_cache: torch.Tensor,
           mask: torch.Tensor, t: int) -> torch.Tensor:
    """Store the new token's k, v [B, Hkv, Dh] in column t - 1 of a cache layer, keys kt_cache in the layout of
    `key_layout` and values v_cache [B, Hkv, C, Dh]; then softmax(q kᵀ / √Dh + mask) v for q [B, H, Dh] over
    the first t columns, mask [B, 1, 1, C] additive (0, or -inf on prompt pads and unwritten columns). Query
    head i reads key/value head i // (H / Hkv). Returns [B, H·Dh]."""
    B, H, Dh = q.shape
    if uses_fused(q.device):
        return torch.ops.rlhfscale.decode_attention(q.contiguous(), k.contiguous(), v.contiguous(), kt_cache,
                                                    v_cache, mask.view(B, -1), t, Dh**-0.5)
    kt_cache[..., t - 1], v_cache[:, :, t - 1] = k, v
    return eager(q, kt_cache, v_cache, mask)


def prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kt_cache: torch.Tensor, v_cache: torch.Tensor,
            mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The prompts' attention through the fused kernel (`uses_fused`): store the keys and values k, v [N, Hkv, Dh]
    of N prompt tokens in columns cols [N] of cache rows rows [N] (sorted by row, then column) of a cache layer
    (kt_cache tiled [B, Hkv, C / TILE, Dh, TILE], v_cache [B, Hkv, C, Dh]); then attend each token's q [N, H, Dh]
    to its row's columns up to its own, mask [B, 1, 1, C] hiding the pads. Returns [N, H·Dh]."""
    B, Dh = kt_cache.shape[0], q.shape[-1]
    return torch.ops.rlhfscale.prefill_attention(q.contiguous(), k.contiguous(), v.contiguous(), kt_cache, v_cache,
                                                 mask.view(B, -1), rows, cols, Dh**-0.5)


def eager(q: torch.Tensor, kt: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √Dh + mask) v as batched matmuls over all C columns of a cache layer, the mask hiding the
    unwritten ones (any device): q [B, H, Dh], kt [B, Hkv, Dh, C], v [B, Hkv, C, Dh] -> [B, H·Dh]."""
    B, H, Dh = q.shape
    q = q.view(B, kt.shape[1], -1, Dh)  # the query heads that share a key/value head
    scores = (q @ kt).mul_(Dh**-0.5).add_(mask)  # [B, Hkv, H/Hkv, C]
    return (scores.float().softmax(-1).to(v.dtype) @ v).view(B, H * Dh)
