"""Model families. Each module owns its module classes; `interop/` owns the HF mappings."""

from flax_lm.models import bert, elmo, gpt2, llama, modernbert, qwen3, t5

# the decoder-only families: causal LM, decoding through generation.CausalDecoder
DECODERS = ("gpt2", "llama", "qwen3")

# task -> the encoder head that serves it
_BERT_HEADS = {"classification": "sequence_classification", "token_classification": "token_classification",
               "question_answering": "question_answering"}


def task_of_head(head: str) -> str:
    """The task a model head serves (the inverse of `head_name`)."""
    return {"causal_lm": "causal_lm", "bidirectional_lm": "causal_lm", "seq2seq": "seq2seq",
            "pretraining": "masked_lm", "masked_lm": "masked_lm",
            **{h: task for task, h in _BERT_HEADS.items()}}[head]


def head_name(cfg) -> str:
    """The head a run config's task needs: "causal_lm" for the decoders (GPT-2, Llama, Qwen3), "seq2seq"
    for T5 (span corruption and text-to-text alike), a `bert.HEADS` key for encoders; "" (no head) for
    the base model of an `embedding` run (a decoder's is its tied causal LM, whose head has no weights)."""
    if cfg.task == "embedding":
        return ""
    if cfg.model.family in DECODERS:
        return "causal_lm"
    if cfg.model.family == "elmo":   # its causal_lm is the bidirectional LM
        return "bidirectional_lm" if cfg.task == "causal_lm" else _BERT_HEADS[cfg.task]
    if cfg.model.family == "t5":
        return "seq2seq"
    if cfg.task == "masked_lm":
        return "pretraining" if cfg.data.nsp and cfg.model.family == "bert" else "masked_lm"
    return _BERT_HEADS[cfg.task]


def build_model(model_cfg, head: str = "causal_lm", vocab: tuple = ()):
    """The Linen module for the `model` section of a run config, with the given head. `vocab` (token
    strings by id) spells the tokens for a model that reads their characters (ELMo)."""
    if model_cfg.family == "gpt2":
        return gpt2.GPT2LMHeadModel(gpt2.GPT2Config.from_config(model_cfg))
    if model_cfg.family == "llama":
        return llama.LlamaForCausalLM(llama.LlamaConfig.from_config(model_cfg))
    if model_cfg.family == "qwen3":
        return qwen3.Qwen3ForCausalLM(qwen3.Qwen3Config.from_config(model_cfg))
    if model_cfg.family == "bert":
        return bert.HEADS[head](bert.BertConfig.from_config(model_cfg))
    if model_cfg.family == "modernbert":
        return modernbert.HEADS[head](modernbert.ModernBertConfig.from_config(model_cfg))
    if model_cfg.family == "t5":
        return t5.T5ForConditionalGeneration(t5.T5Config.from_config(model_cfg))
    if model_cfg.family == "elmo":
        return elmo.HEADS[head](elmo.ElmoConfig.from_config(model_cfg, vocab))
    raise ValueError(f"unknown model family {model_cfg.family!r}")


def family_module(model_cfg):
    """The models module (gpt2, llama, qwen3, bert, t5) of a model's config dataclass."""
    families = {bert.BertConfig: bert, t5.T5Config: t5, llama.LlamaConfig: llama, gpt2.GPT2Config: gpt2,
                qwen3.Qwen3Config: qwen3, elmo.ElmoConfig: elmo, modernbert.ModernBertConfig: modernbert}
    return families[type(model_cfg)]


def flops_per_token(model_cfg, seq_len: int) -> float:
    """Training FLOPs per token of a model config (see each family's formula)."""
    return family_module(model_cfg).flops_per_token(model_cfg, seq_len)
