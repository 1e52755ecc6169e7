"""Inference hook: compressed models give bit-identical outputs, decoded per block or eagerly."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import codec  # noqa: E402
from codec import datasets  # noqa: E402
from codec.hooks import attach, find_blocks, weight_bytes  # noqa: E402


def same_bits(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8))


def make_folder(root: Path, src_dir: Path, tensors_file: Path) -> tuple[Path, Path]:
    """(plain folder, compressed folder) with the model's config/tokenizer files."""
    plain, packed = root / "plain", root / "packed"
    plain.mkdir(parents=True)
    packed.mkdir()
    for f in src_dir.iterdir():
        if f.is_file() and f.suffix in (".json", ".jinja", ".txt", ".model"):
            shutil.copy(f, plain / f.name)
            shutil.copy(f, packed / f.name)
    shutil.copy(tensors_file, plain / "model.safetensors")
    codec.compress_file(tensors_file, packed / "model.safetensors.nnc")
    return plain, packed


@pytest.fixture(scope="session", params=["F32", "BF16"])
def minilm(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"minilm-{request.param}")
    if request.param == "F32":
        st = datasets.minilm_path()
    else:
        st = datasets.write_safetensors(root / "m.safetensors", datasets.minilm_tensors("BF16"))
    return request.param, *make_folder(root, datasets.minilm_dir(), st)


@pytest.fixture(scope="session")
def smollm2_f32() -> Path:
    return datasets.smollm2_dir()


@pytest.fixture(scope="session", params=["F32", "BF16"])
def smollm2(request, smollm2_f32, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"smol-{request.param}")
    st = smollm2_f32 / "model.safetensors"
    if request.param == "BF16":
        tensors, meta = datasets.read_safetensors(st)
        conv = {k: ("BF16", s, datasets.f32_to_bf16_bits(r.view(np.float32)).view(np.uint8))
                if dt == "F32" else (dt, s, r) for k, (dt, s, r) in tensors.items()}
        st = datasets.write_safetensors(root / "m.safetensors", conv, meta)
    return request.param, *make_folder(root, smollm2_f32, st)


def _ref(cls, folder, dtype):
    """The uncompressed model, its weights in torch-allocated (64-byte aligned) memory.

    transformers may leave weights memory-mapped from the safetensors file, at whatever alignment
    the file gives them; CPU BLAS kernels pick their blocking (and so the summation order) by
    alignment, so the same weights at another alignment give other last bits, compressed or not.
    codec's decoded weights are torch-aligned, so the reference is too.
    """
    model = cls.from_pretrained(str(folder), dtype=torch.bfloat16 if dtype == "BF16" else torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
    return model


@pytest.mark.parametrize("mode", ["on_the_fly", "eager"])
def test_minilm_embeddings_bit_identical(minilm, mode):
    dtype, plain, packed = minilm
    ref = _ref(transformers.AutoModel, plain, dtype)
    model = codec.load_model(packed, mode=mode, workers=2)
    tok = transformers.AutoTokenizer.from_pretrained(str(plain))
    batch = tok(["compressed weights, identical outputs", "a second, longer sentence to pad the batch"],
                padding=True, return_tensors="pt")
    with torch.inference_mode():
        a = ref(**batch).last_hidden_state
        b = model(**batch).last_hidden_state
    assert same_bits(a, b)
    if mode == "on_the_fly":
        h = model.codec_handle
        assert h.stats()["blocks"] == 6
        # between forwards the block weights are released (placeholders hold no memory)
        assert weight_bytes(model) < weight_bytes(ref) * 0.6


def test_minilm_bf16_through_the_gpu_kernel_on_the_cpu_runtime(minilm):
    """Real BF16 model, every block decoded by the CUDA kernel source (CPU runtime, random schedule)."""
    from codec.gpu.cpu_runtime import CpuDevice

    dtype, plain, packed = minilm
    if dtype != "BF16":
        pytest.skip("the kernel decodes BF16 (exponent) frames")
    ref = _ref(transformers.AutoModel, plain, dtype)
    model = codec.load_model(packed, kernel_device=CpuDevice(schedule="random:7"))
    assert len(model.codec_handle.decoders) == 6
    tok = transformers.AutoTokenizer.from_pretrained(str(plain))
    batch = tok(["the kernel decodes every block"], return_tensors="pt")
    with torch.inference_mode():
        assert same_bits(ref(**batch).last_hidden_state, model(**batch).last_hidden_state)


@pytest.mark.parametrize("mode", ["on_the_fly", "eager"])
def test_smollm2_generate_bit_identical(smollm2, mode):
    dtype, plain, packed = smollm2
    ref = _ref(transformers.AutoModelForCausalLM, plain, dtype)
    model = codec.load_model(packed, mode=mode, workers=2)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied weights stay tied
    tok = transformers.AutoTokenizer.from_pretrained(str(plain))
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    kw = dict(max_new_tokens=20, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.inference_mode():
        a = ref.generate(ids, **kw)
        b = model.generate(ids, **kw)
    assert torch.equal(a.sequences, b.sequences)
    assert len(a.logits) == len(b.logits) == 20
    assert all(same_bits(x, y) for x, y in zip(a.logits, b.logits))


class TinyBlock(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.up = torch.nn.Linear(d, 2 * d)
        self.down = torch.nn.Linear(2 * d, d, bias=False)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


class Tiny(torch.nn.Module):
    def __init__(self, d=16, n=3):
        super().__init__()
        self.embed = torch.nn.Embedding(50, d)
        self.layers = torch.nn.ModuleList(TinyBlock(d) for _ in range(n))
        self.head = torch.nn.Linear(d, 50, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


@pytest.fixture
def tiny(tmp_path):
    torch.manual_seed(0)
    model = Tiny().eval()
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items() if k != "head.weight"}
    st = datasets.write_safetensors(tmp_path / "tiny.safetensors",
                                    {k: ("F32", list(v.shape), v) for k, v in sd.items()})
    out = tmp_path / "tiny.nnc"
    codec.compress_file(st, out)
    return model, out


def empty_tiny(d=16):
    from accelerate import init_empty_weights

    with init_empty_weights():
        m = Tiny(d=d)
    m.head.weight = m.embed.weight  # accelerate re-creates re-registered parameters: tie again
    return m


def test_attach_any_module_and_remove(tiny):
    model, nnc = tiny
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        want = model(ids)
    empty = empty_tiny()
    assert [n for n, _ in find_blocks(empty)] == ["layers.0", "layers.1", "layers.2"]
    with codec.open(nnc) as r:
        h = attach(empty, r)
    assert empty.head.weight is empty.embed.weight
    with torch.inference_mode():
        assert same_bits(empty(ids), want)
        assert same_bits(empty(ids), want)  # again: the reusable buffer is refilled correctly
    h.remove()
    assert not h.hooks
    with torch.inference_mode():
        assert same_bits(empty(ids), want)  # materialized for good


def test_lora_on_decoded_weights(tiny):
    """An adapter wrapping a block's Linear sees the decoded base weight."""
    model, nnc = tiny

    class LoRA(torch.nn.Module):
        def __init__(self, base, r=2):
            super().__init__()
            self.base = base
            g = torch.Generator().manual_seed(1)
            self.a = torch.nn.Parameter(torch.randn(r, base.in_features, generator=g) * 0.1)
            self.b = torch.nn.Parameter(torch.randn(base.out_features, r, generator=g) * 0.1)

        def forward(self, x):
            return self.base(x) + x @ self.a.T @ self.b.T

    empty = empty_tiny()
    with codec.open(nnc) as r:
        attach(empty, r)
    for m in (model, empty):
        torch.manual_seed(5)
        m.layers[1].up = LoRA(m.layers[1].up)
    ids = torch.tensor([[7, 8, 9]])
    with torch.inference_mode():
        assert same_bits(empty(ids), model(ids))


def test_mismatched_weights_fail_at_load(tiny, tmp_path, minilm):
    model, nnc = tiny
    # a different model's weights: names do not match -> error naming a tensor, before running
    _, _, packed = minilm
    with codec.open(packed / "model.safetensors.nnc") as r, pytest.raises(codec.FormatError, match="not in the"):
        attach(empty_tiny(), r)
    # wrong shapes
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items() if k != "head.weight"}
    sd["layers.1.up.weight"] = np.zeros((3, 3), np.float32)
    st = datasets.write_safetensors(tmp_path / "bad.safetensors",
                                    {k: ("F32", list(v.shape), v) for k, v in sd.items()})
    codec.compress_file(st, tmp_path / "bad.nnc")
    with codec.open(tmp_path / "bad.nnc") as r, pytest.raises(codec.FormatError, match="layers.1.up.weight"):
        attach(empty_tiny(), r)


def test_smollm2_on_the_fly_short(smollm2_f32, tmp_path):
    """The default run's real-LM check of the per-block path: 3 tokens, F32."""
    plain, packed = make_folder(tmp_path, smollm2_f32, smollm2_f32 / "model.safetensors")
    ref = _ref(transformers.AutoModelForCausalLM, plain, "F32")
    # a 1 MiB budget keeps the norms decoded; the tied 113 MB embedding/head is decoded per use
    model = codec.load_model(packed, mode="on_the_fly", workers=2, decoded_budget=1 << 20)
    assert model.codec_handle.stats()["blocks"] == 32
    assert model.codec_handle.decoded_bytes < 1 << 20
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314]])
    kw = dict(max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.inference_mode():
        a, b = ref.generate(ids, **kw), model.generate(ids, **kw)
    assert torch.equal(a.sequences, b.sequences)
    assert all(same_bits(x, y) for x, y in zip(a.logits, b.logits))


def test_corrupt_weights_fail_at_load(tiny, tmp_path):
    _, nnc = tiny
    data = bytearray(nnc.read_bytes())
    with codec.open(nnc) as r:
        entry = r._nf.tensors["layers.2.up.weight"]
    data[entry.offset + entry.length - 20] ^= 0x40  # inside that tensor's payload
    bad = tmp_path / "corrupt.nnc"
    bad.write_bytes(data)
    with pytest.raises(codec.CodecError, match="layers.2.up.weight"):
        with codec.open(bad) as r:
            attach(empty_tiny(), r)


def test_corrupt_weights_fail_at_eager_load(tiny, tmp_path):
    _, nnc = tiny
    data = bytearray(nnc.read_bytes())
    with codec.open(nnc) as r:
        entry = r._nf.tensors["layers.2.up.weight"]
    data[entry.offset + entry.length - 20] ^= 0x40
    bad = tmp_path / "corrupt.nnc"
    bad.write_bytes(data)
    with pytest.raises(codec.CodecError, match="layers.2.up.weight"):
        with codec.open(bad) as r:
            attach(empty_tiny(), r, eager=True, workers=2)


@pytest.mark.parametrize("batch", [1, 1 << 30])
def test_eager_load_in_batches(tiny, monkeypatch, batch):
    # eager weights are decoded together (decode_frames) in batches of at most _EAGER_BATCH bytes
    import codec.hooks as hooks

    model, nnc = tiny
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        want = model(ids)
    monkeypatch.setattr(hooks, "_EAGER_BATCH", batch)
    empty = empty_tiny()
    with codec.open(nnc) as r:
        h = attach(empty, r, eager=True, workers=2)
    assert h.decoded_bytes == sum(p.numel() * p.element_size() for p in model.parameters())
    for (n, a), (_, b) in zip(model.named_parameters(), empty.named_parameters()):
        assert same_bits(a, b), n
        assert b.data_ptr() % 64 == 0
    with torch.inference_mode():
        assert same_bits(empty(ids), want)


def test_load_model_needs_nnc(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(codec.CodecError):
        codec.load_model(tmp_path)


def test_kernel_path_through_the_cpu_runtime(tmp_path):
    """The hook's GPU path (codec.gpu.BlockDecoder, one launch per block) run on the CPU runtime."""
    from codec.gpu.cpu_runtime import CpuDevice

    torch.manual_seed(0)
    model = Tiny(d=32).to(torch.bfloat16).eval()
    sd = {k: v for k, v in model.state_dict().items() if k != "head.weight"}
    st = datasets.write_safetensors(tmp_path / "tiny-bf16.safetensors", {
        k: ("BF16", list(v.shape), v.contiguous().view(torch.uint16).numpy()) for k, v in sd.items()})
    nnc = tmp_path / "tiny-bf16.nnc"
    codec.compress_file(st, nnc)
    with codec.open(nnc) as r:
        assert {r.frame(k).codec_id for k in r.keys()} == {"exponent"}
        empty = empty_tiny(d=32)
        h = attach(empty, r, kernel_device=CpuDevice(schedule="reverse"))
    assert len(h.decoders) == 3
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.inference_mode():
        assert same_bits(empty(ids), model(ids))


def test_decoded_budget_makes_outside_weights_per_use(tiny):
    """With no budget for weights outside blocks, the tied embedding/head is decoded per use."""
    model, nnc = tiny
    ids = torch.tensor([[2, 7, 1, 8]])
    with torch.inference_mode():
        want = model(ids)
    empty = empty_tiny()
    with codec.open(nnc) as r:
        h = attach(empty, r, decoded_budget=0)
    names = [b.name for b in h.blocks]
    assert {"embed (per use)", "head (per use)"} <= set(names)
    assert h.decoded_bytes == 0
    with torch.inference_mode():
        assert same_bits(empty(ids), want)
    assert empty.embed.weight.stride() == (0, 0)  # released after use
    assert empty.head.weight is empty.embed.weight
