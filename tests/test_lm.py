"""Language models (lm.py): HuggingFace folders and token windows in every surface run.

Oracles written here: a HuggingFace ``model(input_ids, labels=input_ids).loss`` of a copy
moved by hand (w0 + x*dx + y*dy, the directions read from the direction file), the
filter norms of a Conv1D's columns and an embedding's rows, and each end model's own loss.
Tiny random configs (GPT-2 with tied weights and Conv1D; Llama with rotary, RMSNorm and
an untied head) are saved with save_pretrained into tmp_path; nothing is downloaded.
"""
import copy
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from conftest import REPO, assert_one_line_error, run_script, snapshot_files

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

import landscape  # noqa: E402
import net_plotter  # noqa: E402

TEXT = ("The quick brown fox jumps over the lazy dog. " * 3 + "Pack my box with five dozen liquor jugs! ") * 12


def gpt2(seed=0, vocab=256):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=vocab, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def llama(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, vocab_size=256,
                                   max_position_embeddings=64, tie_word_embeddings=False,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


def byte_windows(text, seq_len, split="train"):
    """The toolkit's windows of a text file, made independently: UTF-8 bytes, the first
    90 % train, consecutive windows of seq_len, the partial last one dropped."""
    b = torch.tensor(list(text.encode("utf-8")), dtype=torch.int64)
    cut = int(len(b) * 0.9)
    part = b[:cut] if split == "train" else b[cut:]
    n = len(part) // seq_len
    return part[:n * seq_len].view(n, seq_len)


def hf_loss(model, windows):
    """The HF definition: mean next-token cross-entropy (all windows equally long, so the
    one-batch mean is the token-weighted mean)."""
    with torch.no_grad():
        return model(windows, labels=windows).loss.item()


def moved(model, dir_file, x, y=None):
    """A copy of ``model`` at w0 + x*dx + y*dy, the directions read from the file by name."""
    net = copy.deepcopy(model)
    params = dict(net.named_parameters())
    with h5py.File(dir_file, "r") as f:
        for group, c in (("xdirection", x), ("ydirection", y)):
            if c is None:
                continue
            names = json.loads(f[group].attrs["names"])
            with torch.no_grad():
                for i, name in enumerate(names):
                    params[name].add_(torch.from_numpy(f[group][str(i)][()]) * c)
    return net


@pytest.mark.parametrize("make", [gpt2, llama], ids=["gpt2", "llama"])
def test_surface_points_equal_hf_evaluation(tmp_path, make):
    model = make()
    w = byte_windows(TEXT, 32)
    dir_file = str(tmp_path / "dirs.h5")
    s = landscape.surface(model, w, x=(-1, 1, 3), y=(-0.5, 0.5, 2), dir_file=dir_file, batch_size=3)
    for i, x in enumerate(s.x):
        for j, y in enumerate(s.y):
            want = hf_loss(moved(model, dir_file, x, y), w)
            assert s["train_loss"][i, j] == pytest.approx(want, abs=1e-5)
    # the accuracy: % of next tokens predicted, counted here plainly at the origin
    with torch.no_grad():
        hits = 100.0 * int((model(w).logits[:, :-1].argmax(-1) == w[:, 1:]).sum()) / w[:, 1:].numel()
    at0 = landscape.surface(model, w, x=(0, 1, 2), batch_size=2)
    assert at0["train_acc"][0] == pytest.approx(hits, abs=1e-9)
    assert at0["train_loss"][0] == pytest.approx(hf_loss(model, w), abs=1e-5)


def test_tied_weights_move_once(tmp_path):
    model = gpt2()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    w = byte_windows(TEXT, 16)
    for dir_type in ("weights", "states"):
        dir_file = str(tmp_path / f"{dir_type}.h5")
        landscape.surface(model, w, x=(-1, 1, 2), dir_file=dir_file, dir_type=dir_type, ignore="")
        with h5py.File(dir_file, "r") as f:
            names = json.loads(f["xdirection"].attrs["names"])
        assert "transformer.wte.weight" in names and "lm_head.weight" not in names
        assert len(names) == len(set(names))
        distinct = {t.data_ptr() for t in model.state_dict().values()}
        assert len(names) == (len(distinct) if dir_type == "states" else len(list(model.parameters())))
        if dir_type == "weights":
            assert names == [n for n, _ in model.named_parameters()]


def test_filter_norms_conv1d_columns_embedding_rows():
    model = gpt2()
    d = net_plotter.random_direction(model, "weights", "filter", "biasbn", net_plotter.make_generator(0, 0))
    entries = dict(zip([n for n, _ in model.named_parameters()], d))
    c_attn = model.transformer.h[0].attn.c_attn.weight  # Conv1D: (in 32, out 96)
    assert tuple(c_attn.shape) == (32, 96)
    got = entries["transformer.h.0.attn.c_attn.weight"]
    assert torch.allclose(got.norm(dim=0), c_attn.detach().norm(dim=0), rtol=1e-5)
    assert not torch.allclose(got.norm(dim=1), c_attn.detach().norm(dim=1), rtol=1e-2)
    wte = model.transformer.wte.weight  # Embedding: one row per token
    got = entries["transformer.wte.weight"]
    assert torch.allclose(got.norm(dim=1), wte.detach().norm(dim=1), rtol=1e-5)
    for name, t in entries.items():  # biasbn: every 1-D entry (biases, LayerNorm) zero
        if t.dim() == 1:
            assert not t.any(), name
    # Llama's Linear layers: filters are rows (out, in); RMSNorm weights are zeroed
    model = llama()
    d = net_plotter.random_direction(model, "weights", "filter", "biasbn", net_plotter.make_generator(0, 0))
    for (name, p), t in zip(model.named_parameters(), d):
        if p.dim() == 2:
            assert torch.allclose(t.norm(dim=1), p.detach().norm(dim=1), rtol=1e-5), name
        else:
            assert not t.any(), name


def test_interpolation_ends_are_each_models_loss():
    a, b = gpt2(0), gpt2(1)
    w = byte_windows(TEXT, 32)
    line = landscape.interpolate(a, b, w, x=(0, 1, 3), dir_type="weights", test_data=byte_windows(TEXT, 32, "test"))
    assert line["train_loss"][0] == pytest.approx(hf_loss(a, w), abs=1e-5)
    assert line["train_loss"][-1] == pytest.approx(hf_loss(b, w), abs=1e-5)
    t = byte_windows(TEXT, 32, "test")
    assert line["test_loss"][-1] == pytest.approx(hf_loss(b, t), abs=1e-5)


def test_sequence_classifier_through_the_api():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=256, n_positions=32,
                                  num_labels=3, pad_token_id=0)
    model = transformers.GPT2ForSequenceClassification(cfg).eval()
    ids = torch.randint(1, 256, (12, 10))
    labels = torch.arange(12) % 3
    s = landscape.surface(model, (ids, labels), x=(0, 1, 2), batch_size=5)
    with torch.no_grad():
        want = model(ids, labels=labels).loss.item()
    assert s["train_loss"][0] == pytest.approx(want, abs=1e-5)


def test_stream_cut_into_windows_of_the_default_length():
    model = gpt2()  # context 64: default seq_len min(256, 64)
    stream = torch.tensor(list(TEXT.encode()), dtype=torch.int64)
    s = landscape.surface(model, stream, x=(0, 1, 2))
    n = len(stream) // 64
    assert s["train_loss"][0] == pytest.approx(hf_loss(model, stream[:n * 64].view(n, 64)), abs=1e-5)
    assert s.settings["n_train"] == n


def test_text_with_the_folders_tokenizer(tmp_path):
    """A folder with a tokenizer: the text is its tokens (not bytes), even for a vocabulary
    below 256; windows of --seq_len, the first 90 % train, --max_tokens per split."""
    import lm
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([TEXT], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    folder = str(tmp_path / "m")
    gpt2(0, vocab=64).save_pretrained(folder)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder)
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    ids = torch.tensor(transformers.AutoTokenizer.from_pretrained(folder)(TEXT, add_special_tokens=False)["input_ids"])
    cut = int(len(ids) * 0.9)
    data = lm.load_text_data(f"text:{tmp_path / 't.txt'}", f"hf:{folder}", seq_len=8)
    n = cut // 8
    assert torch.equal(data.train_x, ids[:n * 8].view(n, 8)) and torch.equal(data.train_y, data.train_x)
    m = (len(ids) - cut) // 8
    assert torch.equal(data.test_x, ids[cut:cut + m * 8].view(m, 8))
    data = lm.load_text_data(f"text:{tmp_path / 't.txt'}", f"hf:{folder}", seq_len=8, max_tokens=20)
    assert torch.equal(data.train_x, ids[:16].view(2, 8)) and torch.equal(data.test_x, ids[cut:cut + 16].view(2, 8))


def test_text_folder_and_token_files_give_the_bytes(tmp_path):
    """A folder of text files is read in name order; .npy and nanoGPT .bin token files hold
    the same ids; the windows are the bytes, cut as written in the test."""
    import lm
    folder = str(tmp_path / "m")
    gpt2(0).save_pretrained(folder)
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "b.txt").write_text(TEXT[500:], encoding="utf-8")
    (texts / "a.txt").write_text(TEXT[:500], encoding="utf-8")
    ids = np.frombuffer(TEXT.encode(), dtype=np.uint8).astype(np.uint16)
    np.save(tmp_path / "t.npy", ids)
    ids.tofile(tmp_path / "t.bin")
    want_train, want_test = byte_windows(TEXT, 16), byte_windows(TEXT, 16, "test")
    for name in (f"text:{texts}", f"tokens:{tmp_path / 't.npy'}", f"tokens:{tmp_path / 't.bin'}"):
        data = lm.load_text_data(name, f"hf:{folder}", seq_len=16)
        assert torch.equal(data.train_x, want_train) and torch.equal(data.test_x, want_test), name


def test_masked_labels_are_not_predictions():
    """Labels -100 (padding) count neither in the loss nor in the accuracy: the HF loss
    with the same labels is the oracle."""
    model = gpt2()
    w = byte_windows(TEXT, 32)
    labels = w.clone()
    labels[:, 20:] = -100
    labels[0, 5:] = -100
    s = landscape.surface(model, (w, labels), x=(0, 1, 2), batch_size=4)
    with torch.no_grad():
        logits = model(w).logits
        want = model(w, labels=labels).loss.item()
    assert s["train_loss"][0] == pytest.approx(want, abs=1e-5)
    target = labels[:, 1:]
    hits = ((logits[:, :-1].argmax(-1) == target) & (target != -100)).sum().item()
    assert s["train_acc"][0] == pytest.approx(100.0 * hits / (target != -100).sum().item(), abs=1e-9)


# --------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    gpt2(0).save_pretrained(str(d / "g0"))
    gpt2(1).save_pretrained(str(d / "g1"))
    llama(0).save_pretrained(str(d / "llama"))
    (d / "text.txt").write_text(TEXT, encoding="utf-8")
    return d


def surface_values(path, name="train_loss"):
    with h5py.File(path, "r") as f:
        return f[name][()]


@pytest.mark.slow
def test_command_line_surface_equals_hf_evaluation(folders, tmp_path):
    surf, dirs = str(tmp_path / "s.h5"), str(tmp_path / "d.h5")
    cmd = ["plot_surface.py", "--model", f"hf:{folders / 'llama'}", "--dataset", f"text:{folders / 'text.txt'}",
           "--seq_len", "32", "--x=-1:1:3", "--y=-1:1:2", "--test", "--surf_file", surf, "--dir_file", dirs,
           "--no_progress"]
    run_script(cmd, check=True)
    model = transformers.LlamaForCausalLM.from_pretrained(str(folders / "llama")).eval()
    w, t = byte_windows(TEXT, 32), byte_windows(TEXT, 32, "test")
    loss, test_loss = surface_values(surf), surface_values(surf, "test_loss")
    for i, x in enumerate((-1.0, 0.0, 1.0)):
        for j, y in enumerate((-1.0, 1.0)):
            m = moved(model, dirs, x, y)
            assert loss[i, j] == pytest.approx(hf_loss(m, w), abs=1e-5)
            assert test_loss[i, j] == pytest.approx(hf_loss(m, t), abs=1e-5)
    # 2 ranks == 1 process
    surf2 = str(tmp_path / "s2.h5")
    p = subprocess.run(["mpiexec", "-n", "2", sys.executable] + cmd[:-5] + ["--surf_file", surf2, "--dir_file",
                       dirs, "--no_progress", "--mpi"], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert p.returncode == 0, p.stderr
    np.testing.assert_array_equal(surface_values(surf2), loss)
    # resume: half the points forgotten, recomputed to the same values
    with h5py.File(surf2, "r+") as f:
        done = f["done"][()]
        done.flat[::2] = False
        f["done"][...] = done
    p = run_script(cmd[:-5] + ["--surf_file", surf2, "--dir_file", dirs, "--no_progress"], check=True)
    np.testing.assert_array_equal(surface_values(surf2), loss)


@pytest.mark.slow
def test_command_line_line_between_checkpoint_folders(folders, tmp_path):
    surf = str(tmp_path / "line.h5")
    run_script(["plot_surface.py", "--model", f"hf:{folders / 'g0'}", "--model_file2", str(folders / "g1"),
                "--dataset", f"text:{folders / 'text.txt'}", "--seq_len", "32", "--x=0:1:2", "--surf_file", surf,
                "--no_progress"], check=True)
    w = byte_windows(TEXT, 32)
    loss = surface_values(surf)
    for k, name in ((0, "g0"), (1, "g1")):
        m = transformers.GPT2LMHeadModel.from_pretrained(str(folders / name)).eval()
        assert loss[k] == pytest.approx(hf_loss(m, w), abs=1e-5)


@pytest.mark.slow
def test_tokens_file_equals_text_bytes(folders, tmp_path):
    tokens = tmp_path / "t.npy"
    np.save(tokens, np.frombuffer(TEXT.encode(), dtype=np.uint8).astype(np.uint16))
    outs = []
    for data in (f"text:{folders / 'text.txt'}", f"tokens:{tokens}"):
        surf = str(tmp_path / f"{len(outs)}.h5")
        run_script(["plot_surface.py", "--model", f"hf:{folders / 'g0'}", "--dataset", data, "--seq_len", "16",
                    "--max_tokens", "400", "--x=-1:1:2", "--surf_file", surf, "--dir_file",
                    str(tmp_path / "d.h5"), "--no_progress"], check=True)
        outs.append(surface_values(surf))
    np.testing.assert_array_equal(outs[0], outs[1])
    m = transformers.GPT2LMHeadModel.from_pretrained(str(folders / "g0")).eval()
    w = byte_windows(TEXT, 16)[:400 // 16]
    assert outs[0][0] == pytest.approx(hf_loss(moved(m, str(tmp_path / "d.h5"), -1.0), w), abs=1e-5)


def _bad_inputs(folders, tmp):
    g0, text = folders / "g0", folders / "text.txt"
    empty = tmp / "empty"
    empty.mkdir()
    noweights = tmp / "noweights"
    noweights.mkdir()
    (noweights / "config.json").write_text((g0 / "config.json").read_text())
    unknown = tmp / "unknown"
    unknown.mkdir()
    cfg = json.loads((g0 / "config.json").read_text())
    cfg["model_type"] = "no_such_model_type"
    (unknown / "config.json").write_text(json.dumps(cfg))
    (unknown / "model.safetensors").write_bytes((g0 / "model.safetensors").read_bytes())
    small = tmp / "small"
    gpt2(0, vocab=100).save_pretrained(str(small))
    notutf8 = tmp / "bin.txt"
    notutf8.write_bytes(b"\xff\xfe\x00abc" * 100)
    return {
        "not found": (["--model", f"hf:{tmp / 'nope'}", "--dataset", f"text:{text}"], "not found"),
        "no config": (["--model", f"hf:{empty}", "--dataset", f"text:{text}"], "config.json"),
        "no weights": (["--model", f"hf:{noweights}", "--dataset", f"text:{text}"], "no weights"),
        "unknown config": (["--model", f"hf:{unknown}", "--dataset", f"text:{text}"], "no_such_model_type"),
        "vocab < 256": (["--model", f"hf:{small}", "--dataset", f"text:{text}"], "vocabulary"),
        "image model, text": (["--model", "digits_cnn", "--dataset", f"text:{text}"], "hf:DIR"),
        "text model, images": (["--model", f"hf:{g0}", "--dataset", "digits"], "language model"),
        "no dataset": (["--model", f"hf:{g0}"], "text:PATH"),
        "seq_len too long": (["--model", f"hf:{g0}", "--dataset", f"text:{text}", "--seq_len", "65"], "context"),
        "seq_len 1": (["--model", f"hf:{g0}", "--dataset", f"text:{text}", "--seq_len", "1"], "seq_len"),
        "text not found": (["--model", f"hf:{g0}", "--dataset", f"text:{tmp / 'no.txt'}"], "not found"),
        "not UTF-8": (["--model", f"hf:{g0}", "--dataset", f"text:{notutf8}"], "UTF-8"),
        "too few tokens": (["--model", f"hf:{g0}", "--dataset", f"text:{text}", "--max_tokens", "10"], "window"),
        "other architecture": (["--model", f"hf:{g0}", "--model_file2", str(folders / "llama"), "--dataset",
                                f"text:{text}"], "architecture"),
        "mse": (["--model", f"hf:{g0}", "--dataset", f"text:{text}", "--loss_name", "mse"], "mse"),
    }


@pytest.mark.slow
def test_bad_inputs_one_error_line_nothing_written(folders, tmp_path):
    cases = _bad_inputs(folders, tmp_path)
    before = snapshot_files(str(tmp_path))
    for what, (args, words) in cases.items():
        p = run_script([os.path.join(REPO, "plot_surface.py"), *args, "--x=-1:1:2", "--no_progress"], cwd=str(tmp_path))
        line = assert_one_line_error(p)
        assert p.returncode == 2, (what, p.stderr)
        assert words in line, (what, line)
        assert snapshot_files(str(tmp_path)) == before, what


@pytest.mark.slow
def test_readme_language_model_blocks_run(tmp_path):
    import re
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    section = text[text.index("## Language models"):]
    section = section[:section.index("\n## ")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "make.py").write_text(code)
    run_script([str(tmp_path / "make.py")], cwd=str(tmp_path), check=True)
    for line in re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip().splitlines():
        args = line.split()
        assert args[0] == "python"
        extra = ["--no_progress"] if args[1] == "plot_surface.py" else []
        run_script([os.path.join(REPO, args[1]), *args[2:], *extra], cwd=str(tmp_path), check=True)
    surf = [f for f in os.listdir(tmp_path) if f.startswith("tiny_lm_") and f.endswith("x[-1.0,1.0,7].h5")]
    trained = [f for f in os.listdir(tmp_path / "lm_run") if f.endswith("x[-1.0,1.0,7].h5")]
    assert len(surf) == 1 and len(trained) == 1
    trained = surface_values(str(tmp_path / "lm_run" / trained[0]))
    corners = trained[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert trained[3, 3] < 4.0 and (trained[3, 3] < corners).all()  # a trained basin, below ln(256) = 5.5
    loss = surface_values(str(tmp_path / surf[0]))
    assert loss.shape == (7, 7) and np.isfinite(loss).all()
    model = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "tiny_lm")).eval()
    w = byte_windows((tmp_path / "prose.txt").read_text(encoding="utf-8"), 64)
    assert loss[3, 3] == pytest.approx(hf_loss(model, w), abs=1e-5)


@pytest.mark.slow
def test_train_lm_writes_folders_that_learn_and_fine_tune(tmp_path):
    from safetensors.torch import load_file
    base = ["--n_layer", "1", "--n_embd", "16", "--n_head", "2", "--seq_len", "32", "--max_tokens", "8000",
            "--batch_size", "8", "--lr", "0.01", "--threads", "1"]
    run_script([os.path.join(REPO, "train_lm.py"), "--save_dir", "a", "--steps", "40", "--save_every", "20",
                *base], cwd=str(tmp_path), check=True)
    assert sorted(os.listdir(tmp_path / "a")) == ["final", "step_0", "step_20", "step_40"]
    text = __import__("lm").pydoc_text()
    w = byte_windows(text, 32)[:8000 // 32]
    start = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "a" / "step_0")).eval()
    end = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "a" / "final")).eval()
    assert hf_loss(end, w) < hf_loss(start, w) - 0.5
    # a fine-tune starts at its parent
    run_script([os.path.join(REPO, "train_lm.py"), "--save_dir", "ft", "--init", "a/final", "--steps", "5",
                "--save_every", "5", *base], cwd=str(tmp_path), check=True)
    parent, child0 = (load_file(str(tmp_path / p / "model.safetensors")) for p in ("a/final", "ft/step_0"))
    assert parent.keys() == child0.keys() and all(torch.equal(parent[k], child0[k]) for k in parent)
    # an existing run is never mixed into: one error line, nothing written
    before = snapshot_files(str(tmp_path))
    p = run_script([os.path.join(REPO, "train_lm.py"), "--save_dir", "a", *base], cwd=str(tmp_path))
    assert p.returncode == 2 and "already holds a run" in assert_one_line_error(p)
    assert snapshot_files(str(tmp_path)) == before


@pytest.mark.slow
def test_flags_parse_before_torch_and_transformers():
    code = ("import sys, flags, train_lm; train_lm.build_parser(); "
            "a = flags.parse_args(flags.build_parser(), ['--model', 'hf:runs/a/', '--dataset', 'text:t.txt']); "
            "print(a.model_file, 'torch' in sys.modules, 'transformers' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert p.stdout.split() == [os.path.normpath("runs/a"), "False", "False"]
