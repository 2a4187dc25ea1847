"""Checkpoint I/O: NGC .pt files, Hugging Face round trips, strictness and bad input."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
import transformers

from bertdistill.checkpoints import (
    CheckpointError,
    load_model,
    load_projection,
    save_model,
)
from bertdistill.model import BertConfig, build_model
from helpers import hf_config, ngc_state_dict, random_batch, write_vocab

TOL = 1e-5


def write_ngc_folder(folder: Path, hf_model, vocab_lines: int = 30522) -> Path:
    """An NGC-style folder: config.json + vocab.txt + a training checkpoint under a 'model' key."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = hf_model.config.to_dict()
    (folder / "config.json").write_text(
        json.dumps(
            {
                k: cfg[k]
                for k in (
                    "vocab_size",
                    "hidden_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "intermediate_size",
                    "hidden_act",
                    "hidden_dropout_prob",
                    "attention_probs_dropout_prob",
                    "max_position_embeddings",
                    "type_vocab_size",
                    "initializer_range",
                )
            }
        )
    )
    write_vocab(folder / "vocab.txt", vocab_lines)
    ckpt = {
        "model": ngc_state_dict(hf_model),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
        "epoch": 2,
        "args": argparse.Namespace(seed=1, amp=True),
    }
    torch.save(ckpt, folder / "bert_base_qa.pt")
    return folder


@pytest.fixture(scope="module")
def ngc_vocab_hf():
    """Models with NVIDIA's padded vocabulary (30528 rows for a 30522-line vocab.txt)."""
    torch.manual_seed(0)
    return hf_config(vocab_size=30528, hidden_size=32, intermediate_size=64)


def test_ngc_qa_checkpoint_loads_to_same_outputs(tmp_path, ngc_vocab_hf):
    hf = transformers.BertForQuestionAnswering(ngc_vocab_hf).eval()
    folder = write_ngc_folder(tmp_path / "ngc", hf)
    assert any("gamma" in k for k in torch.load(folder / "bert_base_qa.pt", weights_only=False)["model"])
    ours = load_model(folder / "bert_base_qa.pt", head="qa")
    ids, types, mask = random_batch(30522)
    with torch.no_grad():
        a, b = hf(ids, attention_mask=mask, token_type_ids=types), ours(ids, mask, types)
    assert (a.start_logits - b.start_logits).abs().max() < TOL
    assert (a.end_logits - b.end_logits).abs().max() < TOL
    assert ours.config.vocab_size == 30528


def test_ngc_pretraining_checkpoint_as_encoder_and_mlm(tmp_path, ngc_vocab_hf):
    hf = transformers.BertForPreTraining(ngc_vocab_hf).eval()  # MLM + NSP heads, pooler
    folder = write_ngc_folder(tmp_path / "ngc", hf)
    ids, types, mask = random_batch(30522)
    mlm = load_model(folder, head="mlm")
    enc = load_model(folder)  # heads dropped, pooler kept
    with torch.no_grad():
        a = hf(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        assert (a.prediction_logits - mlm(ids, mask, types).logits).abs().max() < TOL
        assert (a.hidden_states[-1] - enc(ids, mask, types).last_hidden_state).abs().max() < TOL


@pytest.mark.parametrize(
    "head,auto",
    [
        (None, transformers.AutoModel),
        ("mlm", transformers.AutoModelForMaskedLM),
        ("classification", transformers.AutoModelForSequenceClassification),
        ("qa", transformers.AutoModelForQuestionAnswering),
    ],
)
def test_save_then_load_with_transformers(tmp_path, head, auto):
    torch.manual_seed(1)
    ours = build_model(BertConfig.from_dict(hf_config().to_dict()), head).eval()
    vocab = write_vocab(tmp_path / "vocab.txt", ours.config.vocab_size)
    proj = torch.nn.Linear(48, 96)
    folder = save_model(ours, tmp_path / "saved", vocab=vocab, projection=proj, settings={"stage": "test"})
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "distill.json",
        "model.safetensors",
        "projection.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    hf = auto.from_pretrained(folder, attn_implementation="eager").eval()
    ids, types, mask = random_batch(ours.config.vocab_size)
    with torch.no_grad():
        a = hf(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        b = ours(ids, mask, types, output_hidden_states=True)
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert (x - y).abs().max() < 1e-4
    for field in ("logits", "start_logits", "end_logits"):
        if getattr(b, field, None) is not None:
            assert (getattr(a, field) - getattr(b, field)).abs().max() < 1e-4
    # Our own loader reads it back identically, projection included.
    again = load_model(folder, head=head)
    assert all(torch.equal(x, y) for x, y in zip(ours.state_dict().values(), again.state_dict().values(), strict=True))
    back = load_projection(folder)
    assert torch.equal(back.weight, proj.weight) and torch.equal(back.bias, proj.bias)


def test_transformers_folder_loads(tmp_path):
    torch.manual_seed(2)
    hf = transformers.BertForSequenceClassification(hf_config(num_labels=3)).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf", head="classification")
    ids, types, mask = random_batch(99)
    with torch.no_grad():
        assert (
            hf(ids, attention_mask=mask, token_type_ids=types).logits - ours(ids, mask, types).logits
        ).abs().max() < TOL


def test_pytorch_model_bin_folder_loads(tmp_path):
    torch.manual_seed(3)
    hf = transformers.BertModel(hf_config()).eval()
    (tmp_path / "hf").mkdir()
    hf.config.to_json_file(tmp_path / "hf" / "config.json")
    torch.save(hf.state_dict(), tmp_path / "hf" / "pytorch_model.bin")  # the pre-safetensors HF layout
    ours = load_model(tmp_path / "hf")
    ids, types, mask = random_batch(99)
    with torch.no_grad():
        assert (hf(ids, attention_mask=mask).last_hidden_state - ours(ids, mask).last_hidden_state).abs().max() < TOL


def test_missing_head_is_an_error_unless_asked_to_initialise(tmp_path):
    torch.manual_seed(4)
    enc = build_model(BertConfig.from_dict(hf_config().to_dict()), None, add_pooling_layer=False)
    save_model(enc, tmp_path / "enc")
    with pytest.raises(CheckpointError, match="qa_outputs.weight.*init_head=True"):
        load_model(tmp_path / "enc", head="qa")
    model = load_model(tmp_path / "enc", head="classification", init_head=True)
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, enc.embeddings.word_embeddings.weight)


def one_line_error(exc_info, path) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_folder_without_config(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "m")
    assert "config.json" in one_line_error(e, tmp_path / "m" / "config.json")


def test_truncated_safetensors(tmp_path):
    ours = build_model(BertConfig.from_dict(hf_config().to_dict()))
    folder = save_model(ours, tmp_path / "m")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_model(folder)
    assert "truncated or corrupt" in one_line_error(e, folder / "model.safetensors")


def test_truncated_pickle(tmp_path, ngc_vocab_hf):
    folder = write_ngc_folder(tmp_path / "ngc", transformers.BertModel(ngc_vocab_hf))
    f = folder / "bert_base_qa.pt"
    f.write_bytes(f.read_bytes()[:5000])
    with pytest.raises(CheckpointError) as e:
        load_model(f)
    one_line_error(e, f)


def test_vocab_size_mismatch(tmp_path):
    ours = build_model(BertConfig.from_dict(hf_config().to_dict()))
    folder = save_model(ours, tmp_path / "m")
    write_vocab(folder / "vocab.txt", 80)  # embeddings have 99 rows
    with pytest.raises(CheckpointError) as e:
        load_model(folder)
    assert "80 tokens" in one_line_error(e, folder / "vocab.txt")


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    hf = transformers.BertModel(hf_config())
    sd = hf.state_dict()
    del sd["encoder.layer.1.output.dense.bias"]
    sd["encoder.layer.9.extra.weight"] = torch.zeros(2)
    (tmp_path / "m").mkdir()
    torch.save(sd, tmp_path / "m" / "pytorch_model.bin")
    hf.config.to_json_file(tmp_path / "m" / "config.json")
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "m")
    msg = one_line_error(e, tmp_path / "m" / "pytorch_model.bin")
    assert "missing encoder.layer.1.output.dense.bias" in msg and "unexpected encoder.layer.9.extra.weight" in msg


def test_shape_mismatch_with_config(tmp_path):
    hf = transformers.BertModel(hf_config())
    hf.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatch.*intermediate.dense.weight"):
        load_model(tmp_path / "m")


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Exploit()
    evil.marker = marker
    f = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": evil}, f)
    with pytest.raises(CheckpointError) as e:
        load_model(f, config=BertConfig.from_dict(hf_config().to_dict()))
    msg = one_line_error(e, f)
    assert "refused" in msg and "system" in msg
    assert not marker.exists()


def test_save_refuses_to_replace_a_finished_model(tmp_path):
    ours = build_model(BertConfig.from_dict(hf_config().to_dict()))
    save_model(ours, tmp_path / "m")
    with pytest.raises(FileExistsError):
        save_model(ours, tmp_path / "m")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.tmp")]


def _cased_vocab(path: Path) -> Path:
    """A cased WordPiece vocab: upper- and lower-case forms of a word, an accented word."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Hello", "hello", "Café", "cafe", "world", "!"]
    path.write_text("\n".join(words) + "\n")
    return path


def test_saved_folder_tokenizes_as_the_model_was_trained(tmp_path):
    """The tokenizer files follow the model's lower-casing: a cased vocab is saved cased (its
    upper-case pieces say so), an explicit setting wins, and a folder saved from a loaded model
    keeps its source's setting. transformers' AutoTokenizer then gives our WordPiece's ids, and
    model_max_length is the position count."""
    from bertdistill.tokenization import load_tokenizer

    vocab = _cased_vocab(tmp_path / "vocab.txt")
    ours = build_model(BertConfig(vocab_size=11, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=16, max_position_embeddings=24), "classification")  # fmt: skip
    cased = save_model(ours, tmp_path / "cased", vocab=vocab)
    uncased = save_model(ours, tmp_path / "uncased", vocab=vocab, lowercase=True)
    inherited = save_model(load_model(cased, head="classification"), tmp_path / "inherited")
    texts = ["Hello world!", "hello Café", "HELLO cafe"]
    for folder, lowercase in ((cased, False), (uncased, True), (inherited, False)):
        config = json.loads((folder / "tokenizer_config.json").read_text())
        assert config["do_lower_case"] is lowercase and config["model_max_length"] == 24
        tok = transformers.AutoTokenizer.from_pretrained(folder)
        reference = load_tokenizer(vocab, lowercase=lowercase)
        assert [tok(t)["input_ids"] for t in texts] == [reference.encode(t).ids for t in texts]
        assert tok.model_max_length == 24
    tok = transformers.AutoTokenizer.from_pretrained(cased)
    assert tok("Hello")["input_ids"] != tok("hello")["input_ids"]
    tok = transformers.AutoTokenizer.from_pretrained(uncased)
    assert tok("Hello Café")["input_ids"] == tok("hello cafe")["input_ids"]
    special = json.loads((cased / "special_tokens_map.json").read_text())
    assert special == {"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]", "sep_token": "[SEP]",
                       "unk_token": "[UNK]"}  # fmt: skip


def test_saved_config_names_the_labels_and_no_other_model(tmp_path):
    """A source config's _name_or_path and transformers_version do not survive a save; labels given
    are id2label/label2id, and a classifier without them gets LABEL_i rather than a source's labels
    for another number of classes."""
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(hf_config(num_labels=3)).eval()
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf/config.json").read_text())
    config["_name_or_path"] = "someone/another-model"
    (tmp_path / "hf/config.json").write_text(json.dumps(config))
    model = load_model(tmp_path / "hf", head="classification")
    saved = json.loads((save_model(model, tmp_path / "a") / "config.json").read_text())
    assert "_name_or_path" not in saved and "transformers_version" not in saved
    assert saved["id2label"] == {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}
    saved = json.loads((save_model(model, tmp_path / "b", labels=["x", "y", "z"]) / "config.json").read_text())
    assert saved["id2label"] == {"0": "x", "1": "y", "2": "z"} and saved["label2id"] == {"x": 0, "y": 1, "z": 2}
    assert transformers.AutoConfig.from_pretrained(tmp_path / "b").id2label == {0: "x", 1: "y", 2: "z"}
    with pytest.raises(CheckpointError, match="2 label names .* classifier of 3 classes"):
        save_model(model, tmp_path / "c", labels=["x", "y"])
    # A 2-class head on the 3-class source's config (its id2label kept in the config's extras).
    two = build_model(BertConfig.from_dict({**model.config.to_dict(), "num_labels": 2}), "classification")
    assert len(two.config.extra["id2label"]) == 3
    saved = json.loads((save_model(two, tmp_path / "d") / "config.json").read_text())
    assert saved["id2label"] == {"0": "LABEL_0", "1": "LABEL_1"} and saved["num_labels"] == 2


def test_init_from_teacher_layers_equals_the_truncated_teacher(tmp_path):
    """A student initialised from teacher layers [1, 3] computes what transformers' teacher does
    with only those two layers kept (module surgery on the HF model, our copy code not involved)."""
    from bertdistill.checkpoints import init_from_teacher
    from bertdistill.model import BertModel

    cfg = hf_config(num_hidden_layers=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    hf = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    hf.save_pretrained(tmp_path / "t")
    write_vocab(tmp_path / "t" / "vocab.txt", cfg.vocab_size)
    teacher = load_model(tmp_path / "t")
    student = BertModel(
        BertConfig.from_dict({**teacher.config.to_dict(), "num_hidden_layers": 2}), add_pooling_layer=False
    )
    init_from_teacher(student, teacher, [1, 3])
    hf.encoder.layer = torch.nn.ModuleList([hf.encoder.layer[1], hf.encoder.layer[3]])
    hf.config.num_hidden_layers = 2
    ids, types, mask = random_batch(cfg.vocab_size, batch=3, length=12)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        got = student.eval()(ids, mask, types).last_hidden_state
    want, got = want[mask.bool()], got[mask.bool()]  # padded positions are not compared
    assert (got - want).abs().max() < TOL


@pytest.mark.parametrize(
    ("layers", "change", "message"),
    [
        ([0, 1, 2], {}, "lists 3 layers but the student has 2"),
        ([1, 4], {}, r"teacher layers \[4\] do not exist"),
        ([0, 1], {"intermediate_size": 40}, "student intermediate_size 40 != teacher's"),
    ],
)
def test_init_from_teacher_layers_errors(tmp_path, layers, change, message):
    from bertdistill.checkpoints import init_from_teacher
    from bertdistill.model import BertModel

    teacher = BertModel(BertConfig.from_dict(hf_config(num_hidden_layers=4).to_dict()))
    student = BertModel(BertConfig.from_dict({**teacher.config.to_dict(), "num_hidden_layers": 2, **change}))
    with pytest.raises(CheckpointError, match=message) as err:
        init_from_teacher(student, teacher, layers, source="teachers/base")
    assert str(err.value).startswith("teachers/base: ") and "\n" not in str(err.value)
