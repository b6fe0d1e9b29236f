"""Video question answering evaluated as UMT does it: answer-list ranking, exact-match accuracy.

For each question the model ranks a fixed answer list (``model.rank_answers``: the ``k_test`` answers whose
first token is most probable after ``[CLS]``, re-scored by their whole-answer likelihood; see
:meth:`repshift.models.umt_qa.UMTQA.rank_answers`), and the best-ranked answer is the prediction. Accuracy is
the percentage of questions whose prediction equals the annotated answer string exactly (UMT's
``eval_simple_qa_acc`` for MSRVTT-QA and MSVD-QA; no VQA-style soft accuracy).

The model is used through five methods (the UMT QA model provides them)::

    model.encode_video(video [B, T, 3, H, W]) -> video_tokens [B, N, C]
    model.tokenize(texts, max_length) -> (input_ids [B, L], attention_mask [B, L])
    model.tokenize_answers(answers, max_length) -> (answer_ids [A, La], answer_mask [A, La])
    model.encode_question(input_ids, attention_mask, video_tokens) -> question_states [B, L, Ct]
    model.rank_answers(question_states, attention_mask, answer_ids, answer_mask, k) -> (candidates [B, k'], scores)

Under torchrun each rank answers a strided shard of the questions and the predictions are all-gathered, so every
rank returns the single process's result: a question's prediction depends on that question alone.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import repshift.distributed as D
from repshift.evaluate.errors import nothing_evaluated
from repshift.evaluate.retrieval import _collate_videos, _IndexedVideos

__all__ = ["QA_METHODS", "qa_accuracy", "predict_answers", "evaluate_qa", "format_metrics"]

#: What :func:`evaluate_qa` calls on a model.
QA_METHODS = ("encode_video", "tokenize", "tokenize_answers", "encode_question", "rank_answers")


def qa_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Exact-match accuracy in percent: ``100 * mean(prediction == answer)`` (strings compared as they are)."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    if not answers:
        raise ValueError("no questions to score")
    return 100.0 * sum(p == a for p, a in zip(predictions, answers)) / len(answers)


@torch.inference_mode()
def predict_answers(
    model, dataset, indices: Sequence[int], *, batch_size: int = 32, num_workers: int = 0,
    device: str | torch.device = "cpu", amp_dtype: torch.dtype | None = None, k_test: int = 128,
    progress: bool = False,
) -> tuple[dict[int, int], list[int]]:
    """``({question index: predicted answer index}, skipped question indices)`` for ``dataset``'s ``indices``.

    Clips are decoded in ``num_workers`` DataLoader workers; questions are tokenised to ``dataset.max_q_len``
    and the answer list (once) to ``dataset.max_a_len``.
    """
    device = torch.device(device)
    answer_ids, answer_mask = model.tokenize_answers(dataset.answer_list, dataset.max_a_len)
    answer_ids, answer_mask = answer_ids.to(device), answer_mask.to(device)
    loader = DataLoader(
        _IndexedVideos(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=_collate_videos, pin_memory=device.type == "cuda",
    )
    predicted: dict[int, int] = {}
    skipped: list[int] = []
    for idx, clips, valid in tqdm(loader, desc="answer questions", disable=not progress):
        skipped.extend(idx[~valid].tolist())
        if not bool(valid.any()):
            continue
        kept = idx[valid].tolist()
        input_ids, attention_mask = model.tokenize([dataset.questions[i] for i in kept], dataset.max_q_len)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            video_tokens = model.encode_video(clips[valid].to(device, non_blocking=True))
            states = model.encode_question(input_ids, attention_mask, video_tokens)
            candidates, _ = model.rank_answers(states, attention_mask, answer_ids, answer_mask, k_test)
        predicted.update(zip(kept, candidates[:, 0].cpu().tolist()))
    return predicted, skipped


def evaluate_qa(
    model, dataset, *, batch_size: int = 32, num_workers: int = 0, device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None, k_test: int = 128, progress: bool = True,
) -> dict:
    """QA accuracy of ``model`` on ``dataset``, single process or sharded under torchrun.

    ``dataset`` is a :class:`~repshift.data.video_qa.VideoQADataset` or anything with its interface: ``len`` =
    number of questions, ``dataset[i] -> (clip [T, 3, H, W], i or -1 when skipped)``, and attributes
    ``questions``, ``answers``, ``question_ids``, ``answer_list``, ``max_q_len``, ``max_a_len``. Questions whose
    video was skipped as unreadable are left out of the accuracy and counted.

    Returns ``{"acc", "n_questions", "skipped_questions", "n_answers", "k_test", "answerable", "predictions"}``:
    ``answerable`` is the percentage of scored questions whose answer is in the answer list (the accuracy a
    perfect ranker would reach), ``predictions`` one ``{"question_id", "question", "answer", "prediction",
    "correct"}`` per scored question in dataset order. Every rank returns the same dict. No question left to
    score is an :class:`~repshift.evaluate.errors.EmptyEvaluationError`.
    """
    device = torch.device(device)
    rank, world = D.get_rank(), D.get_world_size()
    was_training = model.training
    model.to(device).eval()
    try:
        mine = predict_answers(
            model, dataset, D.shard_indices(len(dataset), rank, world), batch_size=batch_size,
            num_workers=num_workers, device=device, amp_dtype=amp_dtype, k_test=k_test,
            progress=progress and rank == 0,
        )
    finally:
        model.train(was_training)
    predicted: dict[int, int] = {}
    skipped: set[int] = set()
    for part, skips in D.all_gather_objects(mine):
        predicted.update(part)
        skipped.update(skips)
    scored = [i for i in range(len(dataset)) if i not in skipped]
    if not scored:
        raise nothing_evaluated(dataset, total=len(dataset), skipped=len(skipped), unit="questions")
    answer_set = set(dataset.answer_list)
    predictions = [
        {"question_id": dataset.question_ids[i], "question": dataset.questions[i], "answer": dataset.answers[i],
         "prediction": dataset.answer_list[predicted[i]],
         "correct": dataset.answer_list[predicted[i]] == dataset.answers[i]}
        for i in scored
    ]
    return {
        "acc": qa_accuracy([p["prediction"] for p in predictions], [p["answer"] for p in predictions]),
        "n_questions": len(scored),
        "skipped_questions": len(skipped),
        "n_answers": len(dataset.answer_list),
        "k_test": min(int(k_test), len(dataset.answer_list)),
        "answerable": 100.0 * sum(p["answer"] in answer_set for p in predictions) / len(predictions),
        "predictions": predictions,
    }


def format_metrics(result: dict) -> str:
    """One log line: accuracy, counts and the answer-list coverage."""
    return (f"acc {result['acc']:.2f} (questions={result['n_questions']}, skipped={result['skipped_questions']}, "
            f"answers={result['n_answers']}, top-k={result['k_test']}, answerable {result['answerable']:.2f})")
