"""Load-time decompression for inference: weights stay compressed, each block is decoded just in time.

`attach(model, reader)` takes any `torch.nn.Module` (typically built with empty weights) and a
compressed reader (`codec.open(...)`, or several). It finds the transformer blocks on its own
(every `nn.ModuleList` of two or more modules of one class that hold parameters, outermost
first: decoder layers, BERT encoder layers, Whisper's encoder and decoder layers), decodes
everything outside the blocks once, and registers forward pre-hooks that decode a block's
weights into one reusable buffer right before the block runs, and forward hooks that release
them afterwards. Parameters stay the same `nn.Parameter` objects throughout, so tied weights
stay tied and adapters that wrap the layers (LoRA) keep working.

`load_model(path, device, mode)` builds a `transformers` model from a folder's `config.json`
with empty weights and attaches the folder's `.nnc` files (or loads them all at once with
`mode="eager"`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BackendUnavailableError, CodecError, FormatError
from .arrays import torch_aligned
from .formats.frame import for_each

log = logging.getLogger(__name__)


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        raise BackendUnavailableError("the inference hook needs torch (pip install 'codec[torch]')") from exc
    return torch


# --------------------------------------------------------------------------------------
# Finding blocks
# --------------------------------------------------------------------------------------
def find_blocks(model) -> list[tuple[str, object]]:
    """(qualified name, module) of every repeated block, outermost ModuleLists first."""
    nn = _torch().nn
    lists = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) >= 2 and len({type(m) for m in mod}) == 1 \
                and any(True for _ in mod[0].parameters()):
            lists.append((name, mod))
    chosen: list[tuple[str, object]] = []
    for name, mod in sorted(lists, key=lambda x: x[0].count(".")):
        if not any(name.startswith(c + ".") for c, _ in chosen):
            chosen.append((name, mod))
    blocks = []
    for name, mod in sorted(chosen, key=lambda x: x[0]):
        blocks += [(f"{name}.{i}" if name else str(i), m) for i, m in enumerate(mod)]
    return blocks


# --------------------------------------------------------------------------------------
# Matching parameters to stored tensors
# --------------------------------------------------------------------------------------
class _Store:
    """Tensor name -> (reader, name), over one or more compressed readers."""

    def __init__(self, readers) -> None:
        self.where: dict[str, object] = {}
        for r in readers:
            for k in r.keys():
                self.where[k] = r

    def resolve(self, names: list[str], prefix: str | None) -> str | None:
        for n in names:
            cands = [n]
            if prefix:
                cands += [n.removeprefix(prefix + "."), f"{prefix}.{n}"]
            for c in cands:
                if c in self.where:
                    return c
        return None


@dataclass
class _Slot:
    param: object             # nn.Parameter (or buffer owner info)
    tensor: str               # stored name
    frame: object             # parsed Frame over resident bytes
    nbytes: int
    shape: tuple
    dtype: object             # torch dtype
    offset: int = 0           # in the block buffer
    codec: object = None      # the frame's codec, built once (tables included)

    def chunk_tasks(self, out):
        """(slot, chunk index, output slice) of every chunk of this tensor in `out`."""
        f = self.frame
        return [(self, i, out[i * f.chunk_size:i * f.chunk_size + f.chunk_decoded_size(i)])
                for i in range(f.chunk_count)]


@dataclass
class _Block:
    name: str
    module: object
    slots: list[_Slot] = field(default_factory=list)
    nbytes: int = 0
    decoded: bool = False


class Handle:
    """What `attach` returns: hooks, resident frames and statistics; `remove()` undoes it."""

    def __init__(self, model, device: str, workers: int, kernel_device=None) -> None:
        self.model = model
        self.device = device
        self.workers = workers
        # Decoding with the CUDA kernel (codec.gpu): on CUDA devices, or on any device object
        # with the same interface (the CPU runtime in tests).
        self.kernel_device = kernel_device
        self.use_kernel = kernel_device is not None or device.startswith("cuda")
        self.decoders: dict[str, object] = {}
        self.blocks: list[_Block] = []
        self.hooks: list = []
        self.resident_bytes = 0      # compressed bytes kept in memory
        self.decoded_bytes = 0       # bytes decoded once, outside blocks
        self.buffer = None

    # -- decoding ---------------------------------------------------------------------
    def _tensor_from(self, raw: np.ndarray, slot: _Slot):
        torch = _torch()
        t = torch.from_numpy(raw)
        if slot.nbytes == 0:
            return torch.empty(slot.shape, dtype=slot.dtype, device=self.device)
        t = t.view(slot.dtype).view(slot.shape)
        return t if self.device == "cpu" else t.to(self.device, non_blocking=False)

    def _kernel_decode_block(self, block: _Block) -> None:
        """One kernel launch per block (codec.gpu.BlockDecoder); tensors are views of its buffer."""
        tensors = self.decoders[block.name].decode()
        for s in block.slots:
            t = tensors[s.tensor]
            s.param.data = t if t.device.type == self.device.split(":")[0] else t.to(self.device)
        block.decoded = True

    def decode_block(self, block: _Block) -> None:
        torch = _torch()
        if self.use_kernel:
            return self._kernel_decode_block(block)
        buf = self.buffer[:block.nbytes]
        # One task per chunk, not per tensor: a block's tensors differ in size by 10x and more,
        # so per-tensor tasks leave a worker idle. Resident payloads were verified at load; every
        # chunk's decoded bytes are still checked against its XXH3 here.
        tasks = []
        for s in block.slots:
            if s.codec is None and s.frame.chunk_count:
                s.codec = s.frame.codec
            tasks += s.chunk_tasks(buf[s.offset:s.offset + s.nbytes])

        def one(task) -> None:
            slot, i, out = task
            slot.frame.decode_chunk(i, out, slot.codec)

        tasks.sort(key=lambda t: -t[2].size)     # largest first: the small ones even out the threads
        for_each(one, tasks, self.workers)
        with torch.no_grad():
            for s in block.slots:
                s.param.data = self._tensor_from(buf[s.offset:s.offset + s.nbytes], s)
        block.decoded = True

    def release_block(self, block: _Block) -> None:
        for s in block.slots:
            s.param.data = _placeholder(s.shape, s.dtype, self.device)
        block.decoded = False

    # -- lifecycle --------------------------------------------------------------------
    def remove(self, materialize: bool = True) -> None:
        """Remove the hooks; with `materialize`, decode every block's weights for good."""
        for h in self.hooks:
            h.remove()
        self.hooks.clear()
        if materialize:
            for b in self.blocks:
                self.decode_block(b)
                for s in b.slots:  # own copies: the shared buffer is reused by the next block
                    s.param.data = s.param.data.clone()

    def stats(self) -> dict:
        return {"blocks": len(self.blocks), "resident_compressed_bytes": self.resident_bytes,
                "decoded_outside_blocks_bytes": self.decoded_bytes,
                "block_buffer_bytes": 0 if self.buffer is None else int(self.buffer.nbytes),
                "block_weight_bytes": sum(b.nbytes for b in self.blocks)}


def _placeholder(shape, dtype, device):
    """A tensor with the right shape and dtype that holds one element (stride 0)."""
    torch = _torch()
    return torch.zeros((), dtype=dtype, device=device).expand(shape)


def _resident_frame(reader, name: str):
    """Parse the tensor's frame over an in-memory copy of its bytes (kept resident)."""
    from .formats.frame import parse_frame

    entry = reader._nf.tensors[name]
    blob = reader._nf.buf[entry.offset:entry.offset + entry.length]
    fr = parse_frame(blob, 0, len(blob), where=f"tensor {name!r}")
    reader._nf.frame(entry)  # validates the manifest's dtype/shape against the frame
    # Corruption must surface now, naming the tensor, not in the middle of a generation.
    fr.index  # noqa: B018  (parses and checks the chunk index)
    if fr.chunk_count:
        fr.verify_section(2)
    return fr, len(blob)


_EAGER_BATCH = 256 << 20


def attach(model, reader, *, device: str = "cpu", workers: int | None = None,
           strict: bool = True, eager: bool = False, kernel_device=None,
           decoded_budget: int | None = None) -> Handle:
    """Attach compressed weights to `model`; blocks decode on the fly (or all now, `eager=True`).

    `reader` is a `codec.open(...)` result or a list of them (sharded checkpoints). Every
    parameter and persistent buffer of the model must be found with a matching shape
    (`strict`), else a FormatError names the tensor before anything runs.

    Weights outside the blocks (embeddings, heads, norms) are decoded once at load, up to
    `decoded_budget` bytes if given (smallest first); the rest are decoded per use by hooks on
    the modules that hold them (e.g. a 100 MB embedding table), like a block.

    On `device="cuda"` blocks are decoded by the GPU kernel (`codec.gpu.BlockDecoder`, one launch
    per block, compressed bytes uploaded once). `kernel_device` runs that same path on another
    device object, e.g. `codec.gpu.cpu_runtime.CpuDevice()` (how the tests exercise it).
    """
    torch = _torch()
    from .api import default_workers
    from .dtypes import torch_dtype

    readers = reader if isinstance(reader, (list, tuple)) else [reader]
    store = _Store(readers)
    if device != "cpu" and kernel_device is None:
        _check_device(device)
    h = Handle(model, device, workers or default_workers(), kernel_device)
    prefix = getattr(model, "base_model_prefix", None)

    if hasattr(model, "tie_weights"):
        model.tie_weights()  # tied parameters become one object before we match names
    # every parameter object once, with all the names it is known by (tied weights have several)
    names: dict[int, list[str]] = {}
    objects: dict[int, object] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
        objects[id(p)] = p
    block_of: dict[int, str] = {}
    blocks = [] if eager else find_blocks(model)
    block_params: dict[str, list[int]] = {}
    for bname, bmod in blocks:
        ids = [id(p) for p in bmod.parameters()]
        block_params[bname] = ids
        for i in ids:
            block_of[i] = bname if i not in block_of else "<shared>"

    if decoded_budget is not None and not eager:
        blocks += _per_use_blocks(model, objects, names, block_of, store, prefix, decoded_budget)
    missing, used = [], set()
    replacement: dict[int, object] = {}
    slots_by_block: dict[str, list[_Slot]] = {b: [] for b, _ in blocks}
    # Weights decoded at load go in batches through decode_frames: the workers share every
    # tensor's chunks (a per-tensor pool idles on the many small ones); a batch is bounded so
    # that host memory holds at most that much beyond what is on the device already.
    pending: list = []
    pending_bytes = [0]

    def flush() -> None:
        from .formats.frame import decode_frames

        outs = decode_frames([j[2].frame for j in pending], [j[3] for j in pending], h.workers)
        for (pid, p, slot, _), raw in zip(pending, outs):
            value = h._tensor_from(raw, slot)
            h.decoded_bytes += slot.nbytes
            slot.param = replacement[pid] = torch.nn.Parameter(value, requires_grad=p.requires_grad)
        pending.clear()
        pending_bytes[0] = 0

    with torch.no_grad():
        for pid, p in objects.items():
            stored = store.resolve(names[pid], prefix)
            if stored is None:
                missing.append(names[pid][0])
                continue
            used.add(stored)
            rd = store.where[stored]
            b = block_of.get(pid)
            owners = b if isinstance(b, list) else [b]
            on_the_fly = b is not None and b != "<shared>"
            # Block weights keep their compressed bytes in memory; the rest is decoded once,
            # straight from the file, so eager loading never holds both forms of a tensor.
            fr, nbytes = _resident_frame(rd, stored) if on_the_fly else (rd.frame(stored), 0)
            shape = tuple(fr.shape)
            if tuple(p.shape) != shape:
                raise FormatError(f"tensor {stored!r} has shape {list(shape)} in the file, "
                                  f"the model expects {list(p.shape)}")
            slot = _Slot(None, stored, fr, fr.decoded_size, shape, torch_dtype(fr.dtype))
            # A new Parameter (the model's may live on the meta device, whose data cannot be
            # swapped); every module that held the old one gets the new one, so ties survive.
            # requires_grad as the model had it: besides fine-tuning semantics, generate() with
            # transformers ran 2x slower here with requires_grad=False weights (75 vs 148 tokens/s).
            if not on_the_fly:
                pending.append((pid, p, slot, torch_aligned(fr.decoded_size)))
                pending_bytes[0] += slot.nbytes
                if pending_bytes[0] >= _EAGER_BATCH:
                    flush()
                continue
            for owner in owners:
                slots_by_block[owner].append(slot)
            h.resident_bytes += nbytes
            value = _placeholder(shape, slot.dtype, device)
            slot.param = replacement[pid] = torch.nn.Parameter(value, requires_grad=p.requires_grad)
        if pending:
            flush()
        # persistent buffers stored in the file (e.g. BERT's position_ids)
        for bname_, buf in list(model.named_buffers()):
            stored = store.resolve([bname_], prefix)
            if stored is None or stored in used:
                continue
            fr, _ = _resident_frame(store.where[stored], stored)
            slot = _Slot(None, stored, fr, fr.decoded_size, tuple(fr.shape), torch_dtype(fr.dtype))
            if tuple(buf.shape) == slot.shape:
                buf.copy_(h._tensor_from(fr.decode(), slot).to(buf.dtype))
            used.add(stored)
    _rebind(model, replacement)
    if missing and strict:
        raise FormatError(f"{len(missing)} model parameters are not in the compressed weights, "
                          f"first: {missing[:5]}")
    for bname, bmod in blocks:
        blk = _Block(bname, bmod, slots_by_block[bname])
        off = 0
        for s in blk.slots:
            s.offset = off
            off += -(-s.nbytes // 64) * 64  # 64-byte aligned views
        blk.nbytes = off
        h.blocks.append(blk)
    largest = max((b.nbytes for b in h.blocks), default=0)
    if h.use_kernel:
        from .gpu import BlockDecoder

        for blk in h.blocks:  # built now: uploads once, and bad frames fail at load
            if blk.slots:
                h.decoders[blk.name] = BlockDecoder({s.tensor: s.frame for s in blk.slots},
                                                    device=kernel_device)
    else:
        h.buffer = torch_aligned(largest)
    for blk in h.blocks:
        if not blk.slots:
            continue
        h.hooks.append(blk.module.register_forward_pre_hook(
            lambda mod, args, blk=blk: h.decode_block(blk)))
        h.hooks.append(blk.module.register_forward_hook(
            lambda mod, args, out, blk=blk: h.release_block(blk)))
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return h


def _per_use_blocks(model, objects, names, block_of, store, prefix, budget: int) -> list:
    """Turn the non-block weights that do not fit in `budget` into per-use blocks of their owners."""
    from .dtypes import lookup

    sizes = {}
    for pid in objects:
        if block_of.get(pid) not in (None, "<shared>"):
            continue
        stored = store.resolve(names[pid], prefix)
        if stored is None:
            continue
        entry = store.where[stored]._nf.tensors[stored]
        sizes[pid] = math.prod(entry.shape) * lookup(entry.dtype).itemsize
    kept = 0
    over = []
    for pid in sorted(sizes, key=lambda i: (sizes[i], names[i][0])):  # smallest first
        if kept + sizes[pid] <= budget:
            kept += sizes[pid]
        else:
            over.append(pid)
    extra = []
    for mname, mod in model.named_modules():
        held = [pid for pid in over if any(v is objects[pid] for v in mod._parameters.values())]
        if not held:
            continue
        bname = f"{mname or '<root>'} (per use)"
        extra.append((bname, mod))
        for pid in held:
            prev = block_of.get(pid)
            block_of[pid] = (prev if isinstance(prev, list) else []) + [bname]
    return extra


def _rebind(model, replacement: dict[int, object]) -> None:
    for mod in model.modules():
        for k, v in list(mod._parameters.items()):
            if v is not None and id(v) in replacement:
                mod._parameters[k] = replacement[id(v)]


def _check_device(device: str) -> None:
    torch = _torch()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailableError(f"device {device!r} requested but torch sees no CUDA device")


# --------------------------------------------------------------------------------------
# Whole models
# --------------------------------------------------------------------------------------
def _weight_files(folder: Path) -> list[Path]:
    nnc = sorted(folder.glob("*.nnc"))
    if nnc:
        return nnc
    raise CodecError(f"{folder} holds no .nnc weight files (compress them with `codec compress`)")


def build_empty_model(folder, config=None):
    """A transformers model from `config.json`, with parameters on the meta device."""
    try:
        import transformers
        from accelerate import init_empty_weights
    except ImportError as exc:
        raise BackendUnavailableError("load_model needs transformers and accelerate "
                                      "(pip install 'codec[llm]')") from exc
    config = config or transformers.AutoConfig.from_pretrained(str(folder))
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    with init_empty_weights():
        if cls is not None:
            return cls._from_config(config)
        # No architecture recorded: a causal LM head if the model type has one, else the bare model.
        try:
            return transformers.AutoModelForCausalLM.from_config(config)
        except ValueError:
            return transformers.AutoModel.from_config(config)


def load_model(path, *, device: str = "cpu", mode: str = "on_the_fly", workers: int | None = None,
               kernel_device=None, decoded_budget: int | None = None, **hub_kwargs):
    """A `transformers` model whose weights come from `.nnc` files, ready for forward/generate.

    `path` is a folder with `config.json` and `.nnc` weights (as written by `codec compress`),
    or a Hub repo id (pulled with `codec.hub.pull`). `mode="eager"` decodes everything now;
    `"on_the_fly"` keeps the compressed bytes resident and decodes one block at a time
    (on CUDA with the GPU kernel; `kernel_device` and `decoded_budget` as in `attach`).
    """
    from .api import open as open_nnc

    if mode not in ("on_the_fly", "eager"):
        raise ValueError(f"mode must be 'on_the_fly' or 'eager', not {mode!r}")
    folder = Path(path)
    if not folder.is_dir():  # a Hub repo id: pull the compressed files (verified) into the cache
        from . import hub
        from .datasets import cache_dir

        target = cache_dir() / "hub" / str(path).replace("/", "--")
        hub_kwargs.setdefault("progress", False)
        folder = Path(hub.pull(str(path), output=target, overwrite=True, **hub_kwargs).output)
    files = _weight_files(folder)
    model = build_empty_model(folder)
    readers = [open_nnc(p) for p in files]
    handle = attach(model, readers, device=device, workers=workers, eager=(mode == "eager"),
                    kernel_device=kernel_device, decoded_budget=decoded_budget)
    for r in readers:
        r.close()
    model.eval()
    model.codec_handle = handle
    if device != "cpu":
        model.to(device)
    return model


def weight_bytes(model) -> int:
    """Bytes held by a model's parameters, counting shared storage once and placeholders as 0."""
    seen, total = set(), 0
    for p in model.parameters():
        st = p.untyped_storage()
        key = st.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += st.nbytes()
    return total


def _prod(shape) -> int:
    return math.prod(shape)
