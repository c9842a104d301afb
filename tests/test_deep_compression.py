"""Deep Compression: k-means weight sharing, centroid fine-tuning, Huffman-coded sparse storage, Han's threshold."""
import copy
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.export.compressed import huffman_decode, huffman_encode, load_compressed, save_compressed
from torchslim.models import create_model
from torchslim.prune import (
    CodebookConfig,
    MagnitudePruneConfig,
    attach_codebooks_,
    bake_,
    finetune_codebooks,
    han_threshold_masks,
    kmeans_1d,
    prunable_layers,
    prune_,
    share_weights_,
)
from torchslim.training.config import TrainConfig


@pytest.fixture
def shared_lenet():
    model = create_model("lenet-300-100")
    prune_(model, MagnitudePruneConfig(sparsity=0.9, scope="global"))
    books = share_weights_(model, CodebookConfig(bits=5))
    return model, books


def test_kmeans_linear_init_finds_the_obvious_centroids():
    groups = [-3.0, -1.0, 0.5, 2.0]
    x = torch.tensor([g + d for g in groups for d in (-0.1, 0.0, 0.1)])
    c, assign = kmeans_1d(x, 4, init="linear")
    assert torch.allclose(c, torch.tensor(groups, dtype=torch.float64), atol=1e-12)
    assert assign.tolist() == [i for i in range(4) for _ in range(3)]
    for init in ("density", "random"):  # every init is deterministic for a fixed seed
        assert torch.equal(kmeans_1d(x, 4, init=init)[0], kmeans_1d(x, 4, init=init)[0])


def test_sharing_keeps_zeros_and_at_most_2_to_the_bits_values():
    model = create_model("lenet-300-100")
    prune_(model, MagnitudePruneConfig(sparsity=0.9, scope="global"))
    before = copy.deepcopy(model)
    books = share_weights_(model, CodebookConfig(bits=5))
    for name, layer in prunable_layers(model).items():
        w, w0 = layer.weight, dict(before.named_modules())[name].weight
        assert torch.equal(w == 0, w0 == 0)  # zeros stay exactly zero, nothing else becomes zero
        assert w[w != 0].unique().numel() <= 32
        assert torch.equal(books[name].weight(), w)
        # zeros are not a cluster: the centroids come from the nonzeros only, so none sits at 0
        assert books[name].centroids.abs().min() > 0
    mixed = create_model("lenet5")
    books = share_weights_(mixed, CodebookConfig(bits={"conv*": 8, "fc*": 2}))
    assert len(books["conv1"].centroids) == 256 and len(books["fc1"].centroids) == 4
    with pytest.raises(TorchslimError, match="matches none"):
        share_weights_(create_model("lenet5"), CodebookConfig(bits={"conv*": 8}))


def test_centroid_gradient_is_the_sum_of_its_members_weight_gradients(shared_lenet):
    model, books = shared_lenet
    plain = create_model("lenet-300-100")
    plain.load_state_dict(model.state_dict())
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    attach_codebooks_(model, books)
    nn.functional.cross_entropy(model(x), y).backward()
    nn.functional.cross_entropy(plain(x), y).backward()
    for name, book in books.items():
        layer, ref = dict(model.named_modules())[name], dict(plain.named_modules())[name]
        expected = torch.zeros_like(book.centroids).index_add_(0, book.index[book.mask], ref.weight.grad[book.mask])
        got = layer.parametrizations.weight[0].centroids.grad
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-8)
        assert layer.parametrizations.weight.original.grad is None  # the plain weight is frozen
    baked = bake_(model)
    assert set(baked) == set(books) and not any(hasattr(m, "parametrizations") for m in model.modules())


def test_finetune_trains_centroids_and_keeps_the_structure(shared_lenet):
    model, books = shared_lenet
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
    trained, result = finetune_codebooks(model, books, data, None, TrainConfig(epochs=1, batch_size=32, lr=1e-2),
                                         log=lambda s: None)
    assert len(result.history) == 1
    for name, layer in prunable_layers(model).items():
        assert not torch.equal(trained[name].centroids, books[name].centroids)
        assert torch.equal(layer.weight, trained[name].weight())
        assert torch.equal(layer.weight == 0, ~books[name].mask)


def test_round_trip_is_exact_and_at_least_25x_smaller(shared_lenet, tmp_path):
    model, books = shared_lenet
    info = save_compressed(model, tmp_path / "lenet.tsdc", books)
    assert info["file_bytes"] == (tmp_path / "lenet.tsdc").stat().st_size
    assert info["fp32_bytes"] == 4 * sum(p.numel() for p in model.parameters())
    print(f"\nLeNet-300-100, 90% global, 5-bit: {info['file_bytes']} B, {info['ratio']:.1f}x "
          f"(fixed width {info['fp32_bytes'] / info['fixed_width_bytes']:.1f}x, "
          f"lzma {info['fp32_bytes'] / info['lzma_bytes']:.1f}x)")
    assert info["ratio"] >= 25
    assert info["file_bytes"] < info["fixed_width_bytes"]  # Huffman must beat fixed-width symbols
    loaded = load_compressed(tmp_path / "lenet.tsdc", create_model("lenet-300-100"))
    x = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # without codebooks the layer's distinct values are the codebook: still exact
    save_compressed(model, tmp_path / "derived.tsdc")
    assert torch.equal(load_compressed(tmp_path / "derived.tsdc", create_model("lenet-300-100"))(x), model(x))


def test_unshared_conv_model_with_buffers_round_trips(tmp_path):
    model = create_model("lenet5").eval()
    prune_(model, MagnitudePruneConfig(sparsity=0.5))
    save_compressed(model, tmp_path / "m.tsdc")
    loaded = load_compressed(tmp_path / "m.tsdc", create_model("lenet5")).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_huffman_round_trip_and_size_near_entropy():
    rng = np.random.default_rng(0)
    for alphabet in (2, 13, 300):
        p = rng.dirichlet(np.ones(alphabet) * 0.5)
        s = rng.choice(alphabet, size=5000, p=p)
        data = huffman_encode(s)
        assert np.array_equal(huffman_decode(data), s)
        counts = np.bincount(s)
        freq = counts[counts > 0] / len(s)
        entropy = -(freq * np.log2(freq)).sum()
        header = len(huffman_encode(s[:0], counts))  # symbol count and code table: an empty stream's bytes
        bits_per_symbol = 8 * (len(data) - header) / len(s)  # the bit stream alone, padding included
        assert entropy <= bits_per_symbol < entropy + 1 + 8 / len(s), (alphabet, entropy, bits_per_symbol)
    assert huffman_decode(huffman_encode(np.array([7, 7, 7]))).tolist() == [7, 7, 7]
    assert huffman_decode(huffman_encode(np.array([], dtype=np.int64))).tolist() == []


def test_truncated_or_corrupt_file_raises(shared_lenet, tmp_path):
    model, books = shared_lenet
    path = tmp_path / "m.tsdc"
    save_compressed(model, path, books)
    blob = path.read_bytes()
    for cut in (3, 100, len(blob) - 10):
        (tmp_path / "cut.tsdc").write_bytes(blob[:cut])
        with pytest.raises(TorchslimError, match="cut.tsdc"):
            load_compressed(tmp_path / "cut.tsdc", create_model("lenet-300-100"))
    flipped = bytearray(blob)
    flipped[-50] ^= 0xFF
    (tmp_path / "flip.tsdc").write_bytes(bytes(flipped))
    with pytest.raises(TorchslimError, match="flip.tsdc is corrupt"):
        load_compressed(tmp_path / "flip.tsdc", create_model("lenet-300-100"))
    with pytest.raises(TorchslimError, match="does not fit"):
        load_compressed(path, create_model("lenet5"))


def test_han_threshold_is_quality_times_layer_std():
    model = create_model("lenet-300-100")
    layers = prunable_layers(model)
    masks = han_threshold_masks(layers, {"fc3": 0.5, "*": 1.0})
    for name, q in (("fc1", 1.0), ("fc2", 1.0), ("fc3", 0.5)):
        w = layers[name].weight
        assert torch.equal(masks[name].bool(), w.abs() >= q * w.std())
    with pytest.raises(TorchslimError, match="match no layer"):
        han_threshold_masks(layers, {"conv*": 1.0, "*": 1.0})


def test_header_is_compressed_and_version_1_files_still_load(shared_lenet, tmp_path):
    model, books = shared_lenet
    path = tmp_path / "m.tsdc"
    save_compressed(model, path, books)
    blob = path.read_bytes()
    (n,) = struct.unpack_from("<I", blob, 4)
    header = json.loads(zlib.decompress(blob[8:8 + n]))
    assert header["version"] == 2 and len(json.dumps(header, separators=(",", ":"))) > 2 * n
    # The same content written the version-1 way (plain JSON header) loads to the same weights.
    plain = json.dumps({**header, "version": 1}, separators=(",", ":")).encode()
    (tmp_path / "v1.tsdc").write_bytes(blob[:4] + struct.pack("<I", len(plain)) + plain + blob[8 + n:])
    old = load_compressed(tmp_path / "v1.tsdc", create_model("lenet-300-100"))
    new = load_compressed(path, create_model("lenet-300-100"))
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))
    garbled = blob[:8] + bytes(b ^ 0x55 for b in blob[8:8 + n]) + blob[8 + n:]
    (tmp_path / "bad.tsdc").write_bytes(garbled)
    with pytest.raises(TorchslimError, match="bad.tsdc has a corrupt header"):
        load_compressed(tmp_path / "bad.tsdc", create_model("lenet-300-100"))


def test_float16_biases_halve_their_bytes_and_still_round_trip_exactly(tmp_path):
    torch.manual_seed(0)
    model = create_model("lenet-300-100")
    prune_(model, MagnitudePruneConfig(sparsity=0.9, scope="global"))
    wide = copy.deepcopy(model)
    books32 = share_weights_(wide, CodebookConfig(bits=5))
    books16 = share_weights_(model, CodebookConfig(bits=5, bias_dtype="float16"))
    assert torch.equal(model.fc1.bias, model.fc1.bias.half().float())
    assert not torch.equal(wide.fc1.bias, wide.fc1.bias.half().float())  # untouched by default
    a = save_compressed(wide, tmp_path / "a.tsdc", books32)
    b = save_compressed(model, tmp_path / "b.tsdc", books16)
    assert b["tensors"]["fc1.bias"]["values"] * 2 == a["tensors"]["fc1.bias"]["values"] == 4 * 300
    loaded = load_compressed(tmp_path / "b.tsdc", create_model("lenet-300-100"))
    assert all(torch.equal(x, y) for x, y in zip(loaded.state_dict().values(), model.state_dict().values()))
