"""Extractive question answering on SQuAD v1.1 JSON: features, span labels and answer post-processing.

A context longer than the model's window becomes several features (windows overlapping by
`doc_stride` tokens), each `[CLS] question [SEP] context-window [SEP]`, as in transformers'
run_qa.py. A window that does not hold the whole answer is labelled with position 0 (the
[CLS] token). Predictions are the best span over all windows of a question, mapped back to
the context's characters through the tokenizer's offsets.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from flax_lm.data import input_files
from flax_lm.data.dataset import encoder_batch
from flax_lm.errors import UserError


@dataclasses.dataclass
class QAExample:
    """One question on one context; answer_starts are character offsets into context."""

    id: str
    question: str
    context: str
    answer_texts: list[str]
    answer_starts: list[int]


def read_squad(path: str | Path) -> list[QAExample]:
    """The questions of a SQuAD v1.1 file (data[].paragraphs[].context/qas[]).

    Malformed JSON, a wrong layout, an empty file, a duplicate question id or an answer whose text
    is not at its answer_start in the context are UserErrors naming the file (and question id).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"SQuAD file {str(path)!r} does not exist")
    content = input_files.read_text(path)
    try:
        root = json.loads(content)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply to read; expected SQuAD v1.1 JSON") from None
    except ValueError:   # Python refuses integers of more than 4300 digits
        raise UserError(f"{path}: a JSON number has too many digits") from None

    def need(obj, key: str, kind: type | tuple, where: str):
        value = obj.get(key) if isinstance(obj, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool):   # JSON true is no id or offset
            raise UserError(f"{path}: {where} has no {key!r} of the right type; expected SQuAD v1.1 JSON "
                            f"(data[].paragraphs[].context, qas[].id/question/answers[].text/answer_start)")
        return value

    examples, seen = [], set()
    for a, article in enumerate(need(root, "data", list, "the file")):
        for p, paragraph in enumerate(need(article, "paragraphs", list, f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            context = need(paragraph, "context", str, where)
            for q, qa in enumerate(need(paragraph, "qas", list, where)):
                qid = str(need(qa, "id", (str, int), f"{where}.qas[{q}]"))
                question = need(qa, "question", str, f"question {qid!r}")
                if qid in seen:
                    raise UserError(f"{path}: question id {qid!r} appears twice; ids must be unique")
                if not question.strip():
                    raise UserError(f"{path}: question {qid!r} is empty")
                if not context.strip():
                    raise UserError(f"{path}: the context of question {qid!r} is empty")
                answers = [] if qa.get("answers") is None else qa["answers"]
                if not isinstance(answers, list):
                    raise UserError(f"{path}: question {qid!r}: 'answers' must be a list of "
                                    f"{{'text', 'answer_start'}} objects, not {type(answers).__name__}")
                texts, starts = [], []
                for answer in answers:
                    text = need(answer, "text", str, f"an answer of question {qid!r}")
                    start = need(answer, "answer_start", int, f"an answer of question {qid!r}")
                    if start < 0:   # it would slice from the end of the context, and could match there
                        raise UserError(f"{path}: question {qid!r}: answer_start {start} is negative; it is the "
                                        f"answer's character offset in the context")
                    if not text or context[start:start + len(text)] != text:
                        raise UserError(
                            f"{path}: question {qid!r}: answer {text!r} is not at answer_start {start} of its "
                            f"context (found {context[start:start + len(text)]!r}); fix answer_start")
                    texts.append(text)
                    starts.append(start)
                seen.add(qid)
                examples.append(QAExample(qid, question, context, texts, starts))
    if not examples:
        raise UserError(f"{path}: has no questions")
    return examples


class QADataset:
    """Windows of question + context, with the first answer's token span as labels.

    batch(): input_ids, token_type_ids, attention_mask (B, T) int32; start_positions, end_positions (B,)
    int32 token indices of the answer (0, the [CLS] position, when this window does not hold all of it);
    weights (B,) float32 ones. Kept on the host per feature: example_index (N,), offsets (N, T, 2)
    character offsets into the context (-1 outside the context) and sequence_ids (N, T) (0 question,
    1 context, -1 special or padding).
    """

    def __init__(self, examples: list[QAExample], tokenizer: Tokenizer, max_len: int, pad_id: int,
                 doc_stride: int = 128, max_query_len: int = 64):
        self.examples = examples
        processor = tokenizer.post_processor
        n_special = processor.num_special_tokens_to_add(True) if processor is not None else 0
        room = max_len - max_query_len - n_special
        if room <= doc_stride:
            raise UserError(
                f"doc_stride ({doc_stride}) must be smaller than the context tokens a window holds "
                f"(max_len {max_len} - max_query_len {max_query_len} - {n_special} special = {room})")

        plain = Tokenizer.from_str(tokenizer.to_str())   # copies: the caller's tokenizer keeps its settings
        plain.no_truncation()
        plain.no_padding()
        questions = [e.question.lstrip() for e in examples]   # leading spaces would only waste offsets
        for i, encoding in enumerate(plain.encode_batch(questions, add_special_tokens=False)):
            if len(encoding.ids) > max_query_len:
                questions[i] = questions[i][:encoding.offsets[max_query_len - 1][1]]

        windows = Tokenizer.from_str(tokenizer.to_str())
        windows.enable_truncation(max_length=max_len, stride=doc_stride, strategy="only_second")
        windows.enable_padding(length=max_len, pad_id=pad_id, pad_token=tokenizer.id_to_token(pad_id) or "[PAD]")
        encodings = windows.encode_batch(list(zip(questions, [e.context for e in examples])))
        features = [(i, window)
                    for i, encoding in enumerate(encodings)
                    for window in [encoding] + encoding.overflowing]

        n = len(features)
        self.example_index = np.asarray([i for i, _ in features], np.int32)
        self.input_ids = np.asarray([w.ids for _, w in features], np.int32).reshape(n, max_len)
        self.token_type_ids = np.asarray([w.type_ids for _, w in features], np.int8).reshape(n, max_len)
        self.attention_mask = np.asarray([w.attention_mask for _, w in features], np.int8).reshape(n, max_len)
        self.sequence_ids = np.asarray([[-1 if s is None else s for s in w.sequence_ids] for _, w in features],
                                       np.int8).reshape(n, max_len)
        offsets = np.asarray([w.offsets for _, w in features], np.int32).reshape(n, max_len, 2)
        self.offsets = np.where((self.sequence_ids == 1)[..., None], offsets, -1)
        self.start_positions = np.zeros(n, np.int32)
        self.end_positions = np.zeros(n, np.int32)
        for f in range(n):
            self.start_positions[f], self.end_positions[f] = self._answer_span(f)

    def _answer_span(self, f: int) -> tuple[int, int]:
        """Token positions of the first answer in feature f, or (0, 0) when the window does not hold all of it."""
        example = self.examples[self.example_index[f]]
        context_T = np.flatnonzero(self.sequence_ids[f] == 1)
        if not example.answer_texts or len(context_T) == 0:
            return 0, 0
        start_char = example.answer_starts[0]
        end_char = start_char + len(example.answer_texts[0])
        starts_T, ends_T = self.offsets[f, context_T, 0], self.offsets[f, context_T, 1]
        if not (starts_T[0] <= start_char and ends_T[-1] >= end_char):
            return 0, 0
        return int(context_T[starts_T <= start_char][-1]), int(context_T[ends_T >= end_char][0])

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, indices: np.ndarray, epoch: int = 0) -> dict[str, np.ndarray]:
        """The features at `indices` (B,); every array leads with B."""
        return encoder_batch(self, indices, start_positions=self.start_positions, end_positions=self.end_positions)

    @property
    def references(self) -> dict[str, list[str]]:
        """Question id -> every gold answer text, for exact-match and F1."""
        return {e.id: list(e.answer_texts) for e in self.examples}

    def postprocess(self, start_logits_NxT: np.ndarray, end_logits_NxT: np.ndarray, n_best: int = 20,
                    max_answer_len: int = 30) -> dict[str, str]:
        """Question id -> predicted answer text.

        start/end logits: (len(self), T), one row per feature in dataset order. Per question, the span
        with the highest start + end logit over all its windows among the n_best starts x n_best ends
        of each window, with start <= end, both in the context and at most max_answer_len tokens; ""
        when no window has a valid span.
        """
        if start_logits_NxT.shape != self.input_ids.shape or end_logits_NxT.shape != self.input_ids.shape:
            raise ValueError(f"logits {start_logits_NxT.shape}/{end_logits_NxT.shape}, features {self.input_ids.shape}")
        best_score = np.full(len(self.examples), -np.inf)
        answers = {e.id: "" for e in self.examples}
        for f in range(len(self)):
            in_context_T = self.sequence_ids[f] == 1
            start_T = np.where(in_context_T, start_logits_NxT[f], -np.inf)
            end_T = np.where(in_context_T, end_logits_NxT[f], -np.inf)
            starts = np.argsort(-start_T, kind="stable")[:n_best]
            ends = np.argsort(-end_T, kind="stable")[:n_best]
            s_KxK, e_KxK = np.meshgrid(starts, ends, indexing="ij")
            valid = in_context_T[s_KxK] & in_context_T[e_KxK] & (e_KxK >= s_KxK) & (e_KxK - s_KxK < max_answer_len)
            if not valid.any():
                continue
            score_KxK = np.where(valid, start_T[s_KxK] + end_T[e_KxK], -np.inf)
            k = np.unravel_index(np.argmax(score_KxK), score_KxK.shape)
            i = self.example_index[f]
            if score_KxK[k] > best_score[i]:
                best_score[i] = score_KxK[k]
                example = self.examples[i]
                answers[example.id] = example.context[self.offsets[f, s_KxK[k], 0]:self.offsets[f, e_KxK[k], 1]]
        return answers
