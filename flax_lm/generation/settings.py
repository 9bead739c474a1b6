"""What `generate` is asked to do, checked before anything is compiled."""

import dataclasses

from flax_lm.errors import UserError


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings, named and defaulted as in `transformers.GenerationConfig`, except that
    `temperature` 0 means greedy (there is no separate `do_sample`).

    num_beams > 1 is beam search, which is deterministic: the sampling settings do not apply.
    With sampling, num_return_sequences samples are drawn for every prompt.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0                     # 0: all tokens
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0        # beam scores are divided by length ** length_penalty
    early_stopping: bool | str = False  # beam search: True, False or "never", as in transformers
    num_return_sequences: int = 1
    eos_token_ids: tuple[int, ...] = ()  # stop a sequence at any of these
    pad_token_id: int = 0               # fills finished sequences and left padding
    decoder_start_token_id: int = 0     # encoder-decoders: the first decoder token (T5: the padding id)
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> "GenerationConfig":
        """Returns self, or raises UserError naming the first bad setting."""
        checks = [
            (self.max_new_tokens >= 1, f"max_new_tokens must be at least 1; got {self.max_new_tokens}"),
            (self.temperature >= 0.0, f"temperature must be >= 0 (0 is greedy); got {self.temperature}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 keeps all tokens); got {self.top_k}"),
            (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1]; got {self.top_p}"),
            (0.0 <= self.min_p < 1.0, f"min_p must be in [0, 1); got {self.min_p}"),
            (self.repetition_penalty > 0.0, f"repetition_penalty must be positive; got {self.repetition_penalty}"),
            (self.num_beams >= 1, f"num_beams must be at least 1; got {self.num_beams}"),
            (self.early_stopping in (True, False, "never"),
             f"early_stopping must be true, false or never; got {self.early_stopping!r}"),
            (self.num_return_sequences >= 1,
             f"num_return_sequences must be at least 1; got {self.num_return_sequences}"),
            (self.num_beams == 1 or self.num_return_sequences <= self.num_beams,
             f"num_return_sequences ({self.num_return_sequences}) cannot exceed num_beams ({self.num_beams})"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        return self


def from_sample_section(sample: dict, eos_token_id: int = 0, seed: int = 0,
                        pad_token_id: int | None = None) -> GenerationConfig:
    """The settings of a run config's `sample` section (with its overrides applied); padding (and
    an encoder-decoder's first decoder token) is `pad_token_id`, by default the end token, as
    GPT-2 has no padding token. Not yet validated."""
    early_stopping = {"true": True, "false": False, "never": "never"}.get(str(sample["early_stopping"]).lower())
    if early_stopping is None:
        raise UserError(f"early_stopping must be true, false or never; got {sample['early_stopping']!r}")
    stop_ids = token_ids(sample["stop_token_ids"])
    return GenerationConfig(
        max_new_tokens=sample["max_new_tokens"], temperature=sample["temperature"], top_k=sample["top_k"],
        top_p=sample["top_p"], min_p=sample["min_p"], repetition_penalty=sample["repetition_penalty"],
        num_beams=sample["num_beams"], num_return_sequences=sample["num_return_sequences"],
        length_penalty=sample["length_penalty"], early_stopping=early_stopping,
        eos_token_ids=tuple(dict.fromkeys((eos_token_id, *stop_ids))),
        pad_token_id=eos_token_id if pad_token_id is None else pad_token_id,
        decoder_start_token_id=eos_token_id if pad_token_id is None else pad_token_id, seed=seed)


def token_ids(text: str) -> tuple[int, ...]:
    """"13, 198" -> (13, 198); anything else is a UserError."""
    text = str(text).replace(" ", "")
    # isdigit() alone also passes digits such as "²", which int() refuses
    if text and not all(part.isascii() and part.isdigit() for part in text.split(",")):
        raise UserError(f"stop_token_ids must be comma-separated token ids (e.g. 13,198); got {text[:80]!r}")
    return tuple(int(part) for part in text.split(",")) if text else ()
