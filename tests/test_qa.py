"""UMT video QA (Table 4): the model and its official keys, UMT's answer ranking, the QA data, the evaluator
(also under torchrun), pruning the QA model, the runner, Table 4 and its SMOKE target."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import repshift
from repshift import tasks
from repshift.data import synthetic_video
from repshift.data.video_qa import VideoQADataset, load_answer_list, load_qa_annotations
from repshift.data.video_text import AnnotationError, SKIPPED_INDEX
from repshift.evaluate.qa import evaluate_qa, qa_accuracy
from repshift.models import build_model, umt, umt_qa, umt_weights
from repshift.record import RunRecord
from repshift.report.video_tables import build_table4

from support import make_smoke, run_module, run_torchrun_workers

#: A UMT-shaped encoder with 4 patches per frame (32x32 frames).
VISION = dict(img_size=32, embed_dim=16, depth=2, num_heads=2, proj_dim=8)
#: BERT of 3 layers, cross-attention from layer 1: the decoder gets 3 - 1 = 2 layers.
TEXT = dict(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32, vocab_size=128,
            max_position_embeddings=64, fusion_layer=1)
ANSWERS = ["red", "green", "blue", "up", "down", "circle"]


def tiny_qa(seed: int = 0, frames: int = 2) -> umt_qa.UMTQA:
    torch.manual_seed(seed)
    return umt_qa.qa_model("b", frames, vision=VISION, text=TEXT, tokenizer="tiny").eval()


def official_state(model: umt_qa.UMTQA) -> dict[str, torch.Tensor]:
    """``model``'s weights under UMT's own key names, with the extra entries a released file carries."""
    state = {}
    for key, tensor in model.state_dict().items():
        state["vision_encoder.encoder." + key[len("vision."):] if key.startswith("vision.") else key] = tensor.clone()
    state["text_encoder.embeddings.position_ids"] = torch.arange(64)[None]
    state["text_decoder.bert.embeddings.position_ids"] = torch.arange(64)[None]
    state["temp"] = torch.tensor(0.07)
    state["clip_teacher.proj"] = torch.zeros(2)
    return state


def clip(frames: int = 2, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- model and official keys


def test_architecture_matches_umt_qa():
    model = tiny_qa()
    assert len(model.text_encoder.encoder.layer) == 3 and len(model.text_decoder.bert.encoder.layer) == 2
    assert [hasattr(layer, "crossattention") for layer in model.text_encoder.encoder.layer] == [False, True, True]
    assert all(hasattr(layer, "crossattention") for layer in model.text_decoder.bert.encoder.layer)
    head = model.text_decoder.cls.predictions
    assert head.decoder.weight is model.text_decoder.bert.embeddings.word_embeddings.weight
    assert head.decoder.bias is head.bias
    assert not hasattr(model.vision, "pool_norm") and not hasattr(model.vision, "vision_proj")
    keys = set(model.state_dict())
    assert "text_decoder.bert.encoder.layer.1.crossattention.self.query.weight" in keys
    assert "text_decoder.cls.predictions.transform.LayerNorm.bias" in keys
    # UMT-B: 12 BERT layers, fusion from 9 -> 3 decoder layers; UMT-L: 24, 19 -> 5 (built on meta: no memory)
    with torch.device("meta"):
        assert len(umt_qa.qa_model("b").text_decoder.bert.encoder.layer) == 3
        assert len(umt_qa.qa_model("l").text_decoder.bert.encoder.layer) == 5


def test_decoder_self_attention_is_causal():
    """Changing a later answer token leaves the logits of every earlier position unchanged."""
    model = tiny_qa()
    ids, mask = model.tokenize_answers(["red", "down"], 6)
    states = torch.randn(2, 5, 16)
    qmask = torch.ones(2, 5, dtype=torch.long)
    changed = ids.clone()
    changed[:, 3] = 40
    with torch.no_grad():
        a = model.text_decoder(ids, mask, states, qmask)
        b = model.text_decoder(changed, mask, states, qmask)
    assert torch.equal(a[:, :3], b[:, :3]) and not torch.allclose(a[:, 3:], b[:, 3:])


def test_official_keys_load_strictly_and_reproduce_the_outputs(tmp_path):
    source, target = tiny_qa(seed=0), tiny_qa(seed=1)
    state = official_state(source)
    missing, unexpected = umt_weights.load_official_qa(target, state)
    assert (missing, unexpected) == ([], [])
    video, (ids, mask) = clip(), source.tokenize(["what colour is it", "where does it go"], 25)
    answers = source.tokenize_answers(ANSWERS, 5)
    with torch.no_grad():
        expected = source.rank_answers(source.encode_question(ids, mask, source.encode_video(video)), mask, *answers)
        got = target.rank_answers(target.encode_question(ids, mask, target.encode_video(video)), mask, *answers)
    assert torch.equal(expected[0], got[0]) and torch.allclose(expected[1], got[1])

    # the config path: a file with the official keys loads; one more or one less key is an error
    config = {"_target_": "repshift.models.umt_qa.build", "name": "umt_tiny_qa", "size": "b", "num_frames": 2, "part": "qa",
              "pretrained": False, "tokenizer": "tiny", "vision": VISION, "text": TEXT, "input_size": [2, 3, 32, 32],
              "unit": "vid/s"}
    path = tmp_path / "qa.pth"
    torch.save({"model": state}, path)
    model, weights = build_model({**config, "checkpoint": str(path)})
    assert isinstance(model, umt_qa.UMTQA) and weights["real"]
    torch.save({"model": {**state, "itm_head.weight": torch.zeros(2, 16)}}, path)
    with pytest.raises(RuntimeError, match=r"unexpected \['itm_head.weight'\]"):
        build_model({**config, "checkpoint": str(path)})
    del state["text_decoder.cls.predictions.transform.dense.bias"]
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="missing.*text_decoder.cls.predictions.transform.dense.bias"):
        build_model({**config, "checkpoint": str(path)})
    # the vision part of a QA file, for bench and GMACs: the text side is expected and ignored
    encoder, weights = build_model({**config, "part": "vision", "checkpoint": str(path)})
    assert isinstance(encoder, umt.UMTVision) and weights["real"]
    assert torch.equal(encoder.blocks[1].attn.qkv.weight, source.vision.blocks[1].attn.qkv.weight)


def test_tied_decoder_weights_may_come_under_either_name_but_must_agree():
    source = tiny_qa(seed=0)
    state = official_state(source)
    del state["text_decoder.bert.embeddings.word_embeddings.weight"], state["text_decoder.cls.predictions.bias"]
    target = tiny_qa(seed=1)
    assert umt_weights.load_official_qa(target, state) == ([], [])
    assert torch.equal(target.text_decoder.bert.embeddings.word_embeddings.weight,
                       source.text_decoder.bert.embeddings.word_embeddings.weight)
    state = official_state(source)
    state["text_decoder.cls.predictions.decoder.bias"] = state["text_decoder.cls.predictions.bias"] + 1
    with pytest.raises(ValueError, match="decoder.bias differs from text_decoder.cls.predictions.bias"):
        umt_weights.load_official_qa(tiny_qa(), state)


def test_a_bert_large_file_is_refused_by_a_base_sized_model():
    state = official_state(tiny_qa())
    state["text_encoder.embeddings.word_embeddings.weight"] = torch.zeros(128, 1024)
    with pytest.raises(ValueError, match=r"1024 wide, BERT-large \(UMT-L\).*model=umt_b_qa or umt_l_qa"):
        umt_weights.load_official_qa(tiny_qa(), state)


def test_a_pretrained_file_initialises_the_decoder_from_the_fusion_layers():
    """UMT's remap: text_encoder.bert.X -> text_encoder.X; layers >= fusion_layer and the MLM head -> decoder."""
    source = tiny_qa(seed=0)
    state = {}
    for key, tensor in source.state_dict().items():
        if key.startswith("vision."):
            state["vision_encoder.encoder." + key[len("vision."):]] = tensor
        elif key.startswith("text_encoder."):
            state["text_encoder.bert." + key[len("text_encoder."):]] = tensor
        elif key.startswith("text_decoder.cls."):
            state["text_encoder." + key[len("text_decoder."):]] = tensor
    # BertForMaskedLM ties its head's matrix to its own word embeddings
    state["text_encoder.cls.predictions.decoder.weight"] = state["text_encoder.bert.embeddings.word_embeddings.weight"]
    # the retrieval heads a pre-trained file has and the QA model drops
    state.update({"vision_encoder.pool_norm.weight": torch.ones(16), "vision_proj.weight": torch.zeros(8, 16),
                  "text_proj.weight": torch.zeros(8, 16), "itm_head.weight": torch.zeros(2, 16),
                  "temp": torch.ones(())})
    target = tiny_qa(seed=1)
    assert umt_weights.load_official_qa(target, state) == ([], [])
    for i in range(2):  # decoder layer i = encoder layer fusion_layer + i
        assert torch.equal(target.text_decoder.bert.encoder.layer[i].output.dense.weight,
                           source.text_encoder.encoder.layer[1 + i].output.dense.weight)
    assert torch.equal(target.text_decoder.bert.embeddings.word_embeddings.weight,
                       source.text_encoder.embeddings.word_embeddings.weight)
    assert torch.equal(target.text_decoder.cls.predictions.transform.dense.weight,
                       source.text_decoder.cls.predictions.transform.dense.weight)


# --------------------------------------------------------------------------- ranking


def brute_force_scores(model: umt_qa.UMTQA, states, qmask, answer_ids, answer_mask) -> torch.Tensor:
    """``[Q, A]``: log p(first token | [CLS]) + sum over every real token after [CLS] of log p(token | prefix),
    one answer and one question at a time, read off the decoder's log-softmax."""
    scores = torch.empty(states.shape[0], answer_ids.shape[0])
    for q in range(states.shape[0]):
        for a in range(answer_ids.shape[0]):
            length = int(answer_mask[a].sum())  # the real tokens: [CLS] ... [SEP]; the rest is padding
            ids = answer_ids[a : a + 1, :length]
            logp = model.text_decoder(ids, None, states[q : q + 1], qmask[q : q + 1])[0].log_softmax(-1)
            tokens = sum(float(logp[i - 1, ids[0, i]]) for i in range(1, length))
            scores[q, a] = float(logp[0, ids[0, 1]]) + tokens
    return scores


def test_ranking_equals_the_brute_force_likelihood_of_every_answer():
    model = tiny_qa()
    ids, mask = model.tokenize(["what colour is the square", "where does it go", "which shape"], 25)
    answers = ANSWERS + ["a", "no"]  # short ones: padded, so the pad -> -100 labels matter
    answer_ids, answer_mask = model.tokenize_answers(answers, 5)
    cls, sep, pad = model.tokenizer.cls_token_id, model.tokenizer.sep_token_id, model.tokenizer.pad_token_id
    assert answer_ids[6, 0] == cls and answer_ids[6, 2:].tolist() == [sep, sep, pad]  # "[CLS] a [SEP] [SEP] [PAD]"
    assert answer_ids[0].tolist()[-1] == sep  # "red [SEP]" truncated to 5: [CLS] r ##e ##d [SEP]
    with torch.no_grad():
        states = model.encode_question(ids, mask, model.encode_video(clip(batch=3)))
        expected = brute_force_scores(model, states, mask, answer_ids, answer_mask)
        candidates, scores = model.rank_answers(states, mask, answer_ids, answer_mask, k=len(answers))
    assert torch.equal(candidates[:, 0], expected.argmax(dim=1))
    assert torch.allclose(scores, expected.gather(1, candidates), atol=1e-4)
    assert torch.all(scores[:, :-1] >= scores[:, 1:])
    # top-k < A: the candidates are the k answers with the most probable first token, then re-ranked
    with torch.no_grad():
        first = model.text_decoder(answer_ids[:1, :1].expand(3, 1), None, states, mask)[:, 0].softmax(-1)
        kept, _ = model.rank_answers(states, mask, answer_ids, answer_mask, k=2)
    top2 = first[:, answer_ids[:, 1]].topk(2, dim=1).indices
    assert [set(r) for r in kept.tolist()] == [set(r) for r in top2.tolist()]


def test_exact_match_accuracy():
    assert qa_accuracy(["red", "up", "blue"], ["red", "Up", "blue"]) == pytest.approx(200 / 3)
    assert qa_accuracy(["a"], ["a"]) == 100.0
    with pytest.raises(ValueError, match="2 predictions for 1 answers"):
        qa_accuracy(["a", "b"], ["a"])


# --------------------------------------------------------------------------- data


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_annotation_errors_name_the_file_and_the_problem(tmp_path):
    good = {"video": "a.mp4", "question": "what?", "answer": "red", "question_id": 1}
    with pytest.raises(AnnotationError, match=r"QA annotation file not found: .*nope.json"):
        load_qa_annotations(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(AnnotationError, match=r"bad.json is not valid JSON"):
        load_qa_annotations(tmp_path / "bad.json")
    cases = [
        ({"a": 1}, "expected a JSON list of entries"),
        ([good, {k: v for k, v in good.items() if k != "question_id"}], r"entry 1: no 'question_id' key"),
        ([{**good, "answer": ["red", "blue"]}], r"entry 0: 'answer' must be a string"),
        ([{**good, "question": ""}], r"'question' must be a non-empty string"),
        ([good, {**good, "video": "b.mp4"}], r"question_id 1 appears twice"),
        ([{**good, "question_id": 1.5}], r"'question_id' must be an int or a string"),
    ]
    for content, message in cases:
        path = write_json(tmp_path / "qa.json", content)
        with pytest.raises(AnnotationError, match=message) as error:
            load_qa_annotations(path)
        assert str(path) in str(error.value)
    two = load_qa_annotations(write_json(tmp_path / "qa.json", [good, {**good, "question_id": "x"}]))
    assert [e["question_id"] for e in two] == [1, "x"]
    with pytest.raises(AnnotationError, match=r"answers.json: expected a non-empty JSON list"):
        load_answer_list(write_json(tmp_path / "answers.json", {"red": 1}))
    with pytest.raises(AnnotationError, match=r"answers.json, entry 1: expected a non-empty string, got 3"):
        load_answer_list(write_json(tmp_path / "answers.json", ["red", 3]))


def test_synthetic_qa_files_have_umts_format(tmp_path):
    written = synthetic_video.generate(tmp_path, n_videos=2, num_frames=4, size=32)
    questions, answers = written["msrvtt_qa"]
    assert questions.name == "msrvtt_qa_test.json" and answers.name == "msrvtt_qa_answer_list.json"
    entries = load_qa_annotations(questions)
    (colour, shape, direction), = synthetic_video.clip_attributes(1)
    assert entries[0] == {"video": "clip_000.mp4", "question": f"What colour is the {shape}?", "answer": colour,
                          "question_id": 0}
    assert [e["answer"] for e in entries[:3]] == [colour, shape, direction]
    assert load_qa_annotations(written["msvd_qa"][0])[2]["question_id"] == "q2"
    ds = VideoQADataset(questions, answers, tmp_path / "videos")
    assert len(ds) == 6 and len(ds.answer_list) == 11 and ds.questions[0] == f"what colour is the {shape}"
    assert set(ds.answers) <= set(ds.answer_list)


# --------------------------------------------------------------------------- evaluator


class TableQADataset(torch.utils.data.Dataset):
    """Clips ``[2, 3, 32, 32]`` filled with the question index; question ``i`` has answer ``ANSWERS[i % 6]``."""

    def __init__(self, n: int = 7, skipped=()):
        self.n, self.skipped = n, set(skipped)
        self.questions = [f"question {i}" for i in range(n)]
        self.answers = [ANSWERS[i % len(ANSWERS)] for i in range(n)]
        self.question_ids = list(range(100, 100 + n))
        self.answer_list, self.max_q_len, self.max_a_len = list(ANSWERS), 25, 5

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.skipped:
            return torch.zeros(2, 3, 32, 32), SKIPPED_INDEX
        return torch.full((2, 3, 32, 32), float(i)), i


def test_evaluator_scores_exact_matches_and_leaves_out_unreadable_videos():
    class Oracle:  # answers question i with ANSWERS[i % 6] when i is even, with ANSWERS[0] when odd
        training = False

        def to(self, device):
            return self

        def eval(self):
            return self

        def train(self, mode):
            return self

        def tokenize(self, texts, n):
            return torch.tensor([[int(t.split()[1])] for t in texts]), torch.ones(len(texts), 1)

        def tokenize_answers(self, answers, n):
            return torch.arange(len(answers))[:, None], torch.ones(len(answers), 1)

        def encode_video(self, video):
            return video[:, :1, 0, 0, :1]

        def encode_question(self, ids, mask, tokens):
            assert torch.equal(ids[:, 0].float(), tokens[:, 0, 0])  # each question met its own clip
            return ids

        def rank_answers(self, states, mask, answer_ids, answer_mask, k):
            best = torch.where(states[:, 0] % 2 == 0, states[:, 0] % len(ANSWERS), 0)
            return torch.stack([best, (best + 1) % len(ANSWERS)], 1), torch.zeros(len(best), 2)

    res = evaluate_qa(Oracle(), TableQADataset(7, skipped={4}), batch_size=3, k_test=128, progress=False)
    # scored: 0..6 but 4; correct: the even ones (0, 2, 6) and 1? no (answer green, predicted red) -> 3 of 6
    assert (res["n_questions"], res["skipped_questions"], res["n_answers"], res["k_test"]) == (6, 1, 6, 6)
    assert res["acc"] == pytest.approx(50.0) and res["answerable"] == 100.0
    assert [p["question_id"] for p in res["predictions"]] == [100, 101, 102, 103, 105, 106]
    assert [p["correct"] for p in res["predictions"]] == [True, False, True, False, False, True]
    assert res["predictions"][1] == {"question_id": 101, "question": "question 1", "answer": "green",
                                     "prediction": "red", "correct": False}


def test_evaluator_and_bench_part_serve_the_qa_model():
    model = tiny_qa()
    assert tasks.EVALUATORS["qa"].serves(model) and not tasks.EVALUATORS["retrieval"].serves(model)
    retrieval = umt.retrieval_model("b", 2, vision=VISION, text=TEXT, tokenizer="tiny")
    assert not tasks.EVALUATORS["qa"].serves(retrieval)
    assert tasks.bench_part(model) == (model.vision, "vision encoder")


WORKER = """
import json, os, sys
sys.path.insert(0, {tests_dir!r})
import torch
from repshift import distributed as D
from repshift.evaluate.qa import evaluate_qa
from test_qa import tiny_qa, SynthQADataset

rank, world, _ = D.init_from_env(backend="gloo")
torch.set_num_threads(1)
ds = SynthQADataset()
res = evaluate_qa(tiny_qa(), ds, batch_size=2, k_test=3, progress=True)
with open(os.path.join({out_dir!r}, "rank%d.json" % rank), "w") as f:
    json.dump(dict(res=res, seen=sorted(ds.seen)), f)
D.barrier()
D.cleanup()
"""


class SynthQADataset(TableQADataset):
    """Random clips (seeded by the question index), 9 questions, question 5's video unreadable."""

    def __init__(self):
        super().__init__(9, skipped={5})
        self.questions = [f"what is {a}" for a in ["red", "up", "the shape", "it", "blue", "x", "down", "go", "a"]]
        self.seen: set[int] = set()

    def __getitem__(self, i):
        self.seen.add(i)
        if i in self.skipped:
            return torch.zeros(2, 3, 32, 32), SKIPPED_INDEX
        return clip(batch=1, seed=i)[0], i


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process(tmp_path):
    outs = run_torchrun_workers(WORKER, tmp_path, Path(__file__).parent)
    single = evaluate_qa(tiny_qa(), SynthQADataset(), batch_size=2, k_test=3, progress=False)
    assert (single["n_questions"], single["skipped_questions"]) == (8, 1)
    for out in outs:
        assert out["res"] == json.loads(json.dumps(single))  # every rank: exactly the single-process result
    assert outs[0]["seen"] == [0, 2, 4, 6, 8] and outs[1]["seen"] == [1, 3, 5, 7]  # disjoint shards


# --------------------------------------------------------------------------- pruning, runner, table


def test_pruning_the_qa_model_prunes_its_encoder_with_the_table4_schedule():
    """10 % after blocks 0, 1, 2 at 12 frames: 2352 -> 2117 -> 1906 -> 1716; the text side reads what is left."""
    torch.manual_seed(0)
    model = umt_qa.qa_model("b", 12, vision=dict(embed_dim=8, depth=4, num_heads=1, proj_dim=8),
                            text={**TEXT, "hidden_size": 8, "num_attention_heads": 1}, tokenizer="tiny").eval()
    repshift.patch(model, metric="l2", site="mlp", layers=(0, 1, 2), ratio=0.1)
    assert model.vision.repshift is model.repshift
    ids, mask = model.tokenize(["what colour is it"], 25)
    answers = model.tokenize_answers(ANSWERS, 5)
    with torch.no_grad():
        tokens = model.encode_video(torch.randn(1, 12, 3, 224, 224))
        states = model.encode_question(ids, mask, tokens)
        candidates, scores = model.rank_answers(states, mask, *answers, k=4)
    assert model.repshift.tokens[:4] == [2352, 2117, 1906, 1716]
    assert tokens.shape == (1, 1716, 8) and states.shape == (1, 25, 8) and candidates.shape == scores.shape == (1, 4)
    repshift.unpatch(model)
    assert type(model.vision) is umt.UMTVision


def test_runner_on_synthetic_qa_and_table4(tmp_path):
    """python -m repshift.run with the SMOKE QA model on the synthetic questions: accuracy, predictions file, table."""
    run_module(tmp_path, "experiment=table4", "smoke=video", "model=umt_b_qa", "dataset=msvd_qa", "method=attn",
               "dataset.limit=9", f"paths.data_dir={tmp_path / 'data'}", f"paths.output_dir={tmp_path / 'out'}",
               f"hydra.run.dir={tmp_path / 'out' / 'run'}")
    result = json.loads((tmp_path / "out" / "run" / "result.json").read_text())
    predictions = json.loads((tmp_path / "out" / "run" / "predictions.json").read_text())
    assert result["evaluator"] == "qa" and result["dataset"]["predictions"] == "predictions.json"
    assert result["tokens"][:4] == [784, 706, 636, 573]  # 4 frames: 10 % after blocks 0, 1, 2
    metrics = result["metrics"]
    assert (metrics["n_questions"], metrics["n_answers"], metrics["k_test"], metrics["answerable"]) == (9, 11, 11, 100)
    assert metrics["acc"] == pytest.approx(100 * sum(p["correct"] for p in predictions) / 9)
    assert predictions[0]["question_id"] == "q0" and predictions[0]["question"].startswith("what colour is the")
    path = tmp_path / "out" / "run" / "result.json"
    table = build_table4([(str(path), RunRecord.read(path))])
    assert table.loc["MSVD-QA · Acc †", "UMT-B Attn · ours"] == pytest.approx(metrics["acc"])
    assert table.loc["MSVD-QA · Acc †", "UMT-B Attn · paper"] == 46.5
    assert table.loc["Speed-up ×", "UMT-L Ours · paper"] == pytest.approx(46 / 12)


@pytest.mark.slow
def test_make_reproduce_table4_smoke_prints_table4(tmp_path):
    """`make reproduce-table4 SMOKE=1`: both sweeps (12 + 12 runs) on the tiny UMT QA model, then the table."""
    out, outputs = make_smoke("reproduce-table4", tmp_path)
    assert "## Table 4" in out and (outputs / "tables" / "table4.md").exists()
    assert "MSRVTT-QA · Acc †" in out and "MSVD-QA · Acc †" in out
    for column in ("UMT-B Base · ours", "UMT-L Attn · paper", "UMT-L Ours · Δ", "UMT-B Base+FA · ours"):
        assert column in out
    assert "Throughput †" in out and "GFLOPs †" in out and "217.7" in out
    assert len(list((outputs / "table4").rglob("result.json"))) == 12 + 12
    assert len(list((outputs / "table4").rglob("predictions.json"))) == 12
