"""The config schema's declarations: every key once, with its default, its facts and a one-line help.

Every recipe in `configs/` starts from `get_config()` and changes values; it may not
add keys. Each key is declared in one statement, `key(name, default, help, ...)`, which
states all that is known of it: its type (the default's), the values it may take (`choices`,
or a `range`), whether a resumed run may change it (`safe_on_resume`) and whether it is part
of the architecture, which `train.init_from` takes from its source (`architecture`).
What a declaration means, and the readers of these facts, are in `flax_lm.config.schema`.

A model family owns a block of defaults (`key.family(NAME, key=value, ...)`): BERT's epsilon, T5's
initializer range. They apply when the family is chosen and the recipe or an override did not
set the key (`load.load`), so a T5 run does not silently get GPT-2's values.
"""

import functools

import ml_collections

from flax_lm.config.schema import (NON_NEGATIVE, POSITIVE, UNIT, UNIT_LEFT_OPEN, UNIT_OPEN, UNIT_RIGHT_OPEN, Range,
                                   Schema, table)


def get_config() -> ml_collections.ConfigDict:
    """Returns the schema as a config: every key flax_lm knows, with its default value."""
    return schema().config()


@functools.cache
def schema() -> Schema:
    """Every key's facts, by its dotted name ("train.steps"), in declaration order, and the family blocks."""
    return _declared()


def _declared() -> Schema:
    key = Schema()
    key("task", "causal_lm", "causal_lm | masked_lm | classification | token_classification | question_answering "
        "(encoders) | span_corruption (T5 pre-training) | seq2seq (text-to-text: translation, summarization) | embedding (an imported base "
        "model, for flax-lm embed; not trained)",
        choices=("causal_lm", "masked_lm", "classification", "token_classification", "question_answering",
                 "span_corruption", "seq2seq", "embedding"))

    key("model.family", "gpt2", "gpt2 | llama | qwen3 (decoders) | bert | modernbert (encoders) | t5 "
        "(encoder-decoder) | elmo (biLSTM LM: task causal_lm pre-trains both directions)",
        choices=("gpt2", "llama", "qwen3", "bert", "modernbert", "t5", "elmo"), architecture=True)
    key("model.variant", "bert", "encoders: bert | roberta (positions after the padding id, no NSP)",
        choices=("bert", "roberta"), architecture=True)
    key("model.vocab_size", 4096, "tokens; a tokenizer trained here gets this size",
        range=POSITIVE, architecture=True)
    key("model.max_len", 128, "positions the model has (GPT-2 n_positions)",
        range=POSITIVE, architecture=True)
    key("model.d_model", 256, "width of the residual stream (hidden size)",
        range=POSITIVE, architecture=True)
    key("model.n_layers", 4, "Transformer blocks (T5: of the encoder)",
        range=POSITIVE, architecture=True)
    key("model.n_heads", 4, "attention heads (query heads with grouped-query attention)",
        range=POSITIVE, architecture=True)
    key("model.d_ff", 0, "feed-forward width; 0 means 4 * d_model, as GPT-2 (and T5)",
        range=NON_NEGATIVE, architecture=True)
    key("model.layer_norm_epsilon", 1e-5, "epsilon of the layer (or RMS) norms",
        architecture=True)
    key("model.dropout", 0.0, "residual and embedding dropout",
        range=UNIT_RIGHT_OPEN, safe_on_resume=True)
    key("model.attention_dropout", 0.0, "dropout of the attention weights; needs attention=reference",
        range=UNIT_RIGHT_OPEN, safe_on_resume=True)
    key("model.initializer_range", 0.02, "standard deviation of the initial weights")
    key("model.dtype", "float32", "compute dtype: float32 | bfloat16 | float16",
        choices=("float32", "bfloat16", "float16"), safe_on_resume=True)
    key("model.param_dtype", "float32", "storage dtype of the parameters: float32 | bfloat16",
        choices=("float32", "bfloat16"))
    key("model.scan_layers", False, "nn.scan over the blocks (one compiled block)")
    key("model.remat_policy", "none", "what the backward pass recomputes; see flax_lm.models.remat.POLICIES",
        choices=table("flax_lm.models.remat", "POLICIES"), safe_on_resume=True)
    key("model.attention", "auto", "attention implementation; see flax_lm.ops.attention.IMPLEMENTATIONS",
        choices=table("flax_lm.ops.attention", "IMPLEMENTATIONS"), safe_on_resume=True)
    key("model.type_vocab_size", 2, "encoders: segment (token type) embeddings",
        range=POSITIVE, architecture=True)
    key("model.pad_token_id", 0, "encoders: the tokenizer's padding id (RoBERTa positions start after it)",
        range=NON_NEGATIVE, architecture=True)
    key("model.num_labels", 0, "classification heads: 0 takes the count from the data; 1 is regression",
        range=NON_NEGATIVE)
    key("model.n_decoder_layers", 0, "T5: decoder blocks; 0: as many as the encoder",
        range=NON_NEGATIVE)
    key("model.head_dim", 0, "T5, Llama and Qwen3: size of a head (T5's d_kv); 0: d_model / n_heads",
        range=NON_NEGATIVE, architecture=True)
    key("model.relative_attention_num_buckets", 32, "T5: buckets of the relative position bias",
        range=POSITIVE)
    key("model.relative_attention_max_distance", 128, "T5: distance beyond which relative positions share a bucket",
        range=POSITIVE)
    key("model.feed_forward", "relu", "T5: relu (T5) | gated-gelu (T5 v1.1)",
        choices=("relu", "gated-gelu"))
    key("model.tie_word_embeddings", True, "tied input/output embedding (T5: decoder output scaled by "
        "d_model ** -0.5; Llama: no rescale)",
        architecture=True)
    key("model.n_kv_heads", 0, "Llama, Qwen3: key/value heads of grouped-query attention; 0 = n_heads",
        range=NON_NEGATIVE, architecture=True)
    key("model.rope_theta", 10000.0, "Llama, Qwen3: base of the rotary position embedding's frequencies "
        "(ModernBERT: of its global layers)",
        range=POSITIVE, architecture=True)
    key("model.local_rope_theta", 10000.0, "ModernBERT: rotary base of the local (sliding-window) layers",
        range=POSITIVE, architecture=True)
    key("model.local_attention", 128, "ModernBERT: window of the local layers; a token sees local_attention // 2 "
        "tokens either side", range=POSITIVE, architecture=True)
    key("model.global_attn_every_n_layers", 3, "ModernBERT: layers 0, n, 2n, ... attend globally, the others "
        "locally", range=POSITIVE, architecture=True)
    key("model.classifier_pooling", "cls", "ModernBERT classification: cls (the first token) | mean (over the "
        "attention mask)", choices=("cls", "mean"))

    key("model.elmo_char_dim", 16, "ELMo: size of a character embedding", range=POSITIVE, architecture=True)
    key("model.elmo_filters", "1:32,2:32,3:64,4:128,5:256,6:512,7:1024", "ELMo: the character CNN's filters, "
        "comma-separated WIDTH:COUNT (width in characters)", architecture=True)
    key("model.elmo_highway_layers", 2, "ELMo: highway layers after the character CNN", range=NON_NEGATIVE,
        architecture=True)
    key("model.elmo_max_chars", 50, "ELMo: characters per token (with the begin/end-of-word marks); longer "
        "tokens are cut", range=Range(3), architecture=True)
    key("model.elmo_frozen", True, "ELMo downstream tasks: keep the pre-trained ELMo weights fixed (train the "
        "scalar mix and the head only); False fine-tunes them too")

    # `derived`: the sizes of the family whose 0 `resolve` fills by its rule (flax_lm.derived_sizes); a size a
    # family does not name is none of its model's (GPT-2 and BERT have no head_dim of their own to state)
    key.family("gpt2", derived=("d_ff",))
    key.family("bert", derived=("d_ff",), layer_norm_epsilon=1e-12)   # BertConfig's layer_norm_eps
    # T5Config's layer_norm_epsilon and initializer_factor
    key.family("t5", derived=("d_ff", "head_dim", "n_decoder_layers"), layer_norm_epsilon=1e-6, initializer_range=1.0)
    key.family("llama", derived=("d_ff", "head_dim", "n_kv_heads"),
               tie_word_embeddings=False)   # LlamaConfig's: a head of its own
    key.family("qwen3", derived=("d_ff", "head_dim", "n_kv_heads"),
               layer_norm_epsilon=1e-6)   # Qwen3Config's rms_norm_eps
    key.family("modernbert", derived=("d_ff",), rope_theta=160000.0)   # ModernBertConfig's global rope_theta
    key.family("elmo", derived=("d_ff",))   # d_ff: the LSTM cells per direction

    key("data.source", "default", "pre-training text: default (the embedded corpus), tfds:NAME[/CONFIG][:SPLIT], "
        "hf:NAME[:SPLIT] (Hugging Face datasets: a hub name, a local or save_to_disk directory, or data files), "
        "or comma-separated files/globs: plain text (a file is a "
        "document), .jsonl, .csv, .tsv, .parquet (a record is a document)")
    key("data.document_field", "text", "the field of a JSONL/CSV/Parquet/TFDS/hf: record that holds its text")
    key("data.tfds_data_dir", "", "where TFDS data sets are (prepared, or prepared there); empty: TFDS's own")
    key("data.tfds_download", True, "prepare a TFDS data set that is not in tfds_data_dir yet (downloads)")
    key("data.hf_config", "", "hf: sources: the config of a data set that has several (glue's sst2); "
        "empty: its only one")
    key("data.packing", "concat", "causal LM: concat joins documents into one stream that attends across them "
        "(GPT-2) | segments cuts the same windows but tokens attend, and positions count, within their own document",
        choices=("concat", "segments"))
    key("data.tokenizer", "", "a tokenizer.json to reuse; empty trains one")
    key("data.validation_fraction", 0.05, "pre-training: tail of the token stream held out",
        range=UNIT_OPEN)
    key("data.max_bytes", 0, "read at most this many bytes of text; 0 = all",
        range=NON_NEGATIVE)
    key("data.seq_len", 0, "tokens per example; 0 = model.max_len (a pre-trained model may have more)",
        range=NON_NEGATIVE)
    key("data.lowercase", True, "WordPiece tokenizers trained here: uncased (True) or cased")
    key("data.nsp", False, "masked LM: next-sentence prediction pairs (BERT) instead of packed text (RoBERTa)")
    key("data.whole_word_masking", False, "masked LM: mask all pieces of a word together")
    key("data.mask_prob", 0.15, "masked LM: share of the tokens masked",
        range=UNIT_OPEN)
    key("data.max_predictions", 0, "masked LM: masked positions per sequence; 0 = ceil(mask_prob * max_len)",
        range=NON_NEGATIVE)
    key("data.train", "", "fine-tuning train split: classification .csv/.tsv/.jsonl/.parquet or a tfds: "
        "or hf: split; NER: CoNLL; QA: SQuAD v1.1 .json; seq2seq: see data.source_field")
    key("data.validation", "", "fine-tuning dev split, as data.train")
    key("data.test", "", "fine-tuning test split, as data.train")
    key("data.text_column", "sentence", "classification: the column of the text")
    key("data.text_pair_column", "", "classification: the second text of a pair task; empty for single texts")
    key("data.label_column", "label", "classification: the column of the label")
    key("data.tag_column", -1, "CoNLL: the column of the tag (-1: the last)")
    key("data.skip_bad_records", False, "classification and CoNLL files: leave out malformed rows / sentences "
        "(counted, and reported in one line per file) instead of stopping at the first")
    key("data.doc_stride", 128, "QA: overlap of the windows over a long context, in tokens",
        range=POSITIVE)
    key("data.max_query_len", 64, "QA: question tokens kept",
        range=POSITIVE)
    key("data.dynamic_padding", True, "classification and NER: pad each batch to its longest example, rounded up "
        "to a power of two (one compilation per width)")
    key("data.group_by_length", True, "batch training examples of similar length together; needs dynamic_padding")
    key("data.source_field", "source", "seq2seq: the column of the source in data.train/validation/test tables "
        "(.tsv/.csv/.jsonl/.parquet, tfds: splits), or the suffix of the parallel text file PREFIX.SOURCE_FIELD")
    key("data.target_field", "target", "seq2seq: the column (or file suffix) of the target, as data.source_field")
    key("data.source_prefix", "", "seq2seq: put before every source, as T5 does (\"translate English to German: \")")
    key("data.target_len", 0, "seq2seq: target tokens (with the end token); 0 = data.seq_len",
        range=NON_NEGATIVE)
    key("data.too_long", "truncate", "seq2seq: a source or target over its length: truncate (counted, one warning) "
        "| refuse",
        choices=("truncate", "refuse"))
    key("data.noise_density", 0.15, "span corruption: share of the tokens corrupted (data.seq_len is the encoder "
        "input length)",
        range=UNIT_OPEN)
    key("data.mean_noise_span_length", 3.0, "span corruption: mean length of a corrupted span, in tokens",
        range=POSITIVE)
    key("data.extra_ids", 100, "span corruption: sentinel tokens <extra_id_0> .. added to a tokenizer trained here",
        range=NON_NEGATIVE)

    key("train.seed", 0, "seed of the initial weights, data order, dropout and masking")
    key("train.steps", 300, "optimizer steps of the run; 0: from train.epochs",
        safe_on_resume=True)
    key("train.epochs", 0.0, "passes over the training split, instead of train.steps (which must then be 0); "
        "the steps are epochs * (examples // batch_size)",
        safe_on_resume=True)
    key("train.batch_size", 32, "global, in sequences, per optimizer step",
        range=POSITIVE)
    key("train.grad_accum_steps", 1, "micro-batches per step; batch_size must divide",
        range=POSITIVE, safe_on_resume=True)
    key("train.loss_chunk_len", -1, "positions per chunk of the fused output-projection loss; 0: unfused; "
        "-1: the platform's choice (16; unfused on TPU)",
        range=Range(-1), safe_on_resume=True)
    key("train.label_smoothing", 0.0, "LM tasks: this share of each target spread over the vocabulary",
        range=UNIT_RIGHT_OPEN)
    key("train.log_every", 10, "steps between logged train metrics",
        range=POSITIVE, safe_on_resume=True)
    key("train.wandb", False, "log metrics to Weights & Biases too (pip install 'flax_lm[wandb]'; WANDB_MODE=offline "
        "writes the run in the workdir with no network); TensorBoard and metrics.jsonl are always written",
        safe_on_resume=True)
    key("train.wandb_project", "flax_lm", "train.wandb: the W&B project", safe_on_resume=True)
    key("train.wandb_name", "", "train.wandb: the W&B run's name; empty: the workdir's name", safe_on_resume=True)
    key("train.eval_every", 100, "steps between evaluations on the validation split",
        range=POSITIVE, safe_on_resume=True)
    key("train.eval_batches", 8, "batches an evaluation reads; 0 evaluates the whole validation split",
        range=NON_NEGATIVE, safe_on_resume=True)
    key("train.checkpoint_every", 100, "steps between checkpoints",
        range=POSITIVE, safe_on_resume=True)
    key("train.keep_checkpoints", 3, "newest checkpoints kept",
        range=POSITIVE, safe_on_resume=True)
    key("train.async_checkpointing", True, "write checkpoints while training goes on",
        safe_on_resume=True)
    key("train.progress_bar", True, "show a progress bar on the console",
        safe_on_resume=True)
    key("train.lock_stale_seconds", 120.0, "a workdir lock whose heartbeat stopped this long ago is taken over "
        "(only where flock does not hold, e.g. gcsfuse or NFS, and the holder is on another host)",
        safe_on_resume=True)
    key("train.watchdog_seconds", 600.0, "a multi-process run whose steps, evaluations and saves make no progress "
        "this long after its first step ends with one line naming the lost process; JAX's heartbeat timeout is "
        "half of it; 0: never", range=NON_NEGATIVE, safe_on_resume=True)
    key("train.init_from", "", "a flax_lm workdir or HF model dir/hub id: initial weights and tokenizer",
        safe_on_resume=True)
    key("train.best_metric", "", "keep the checkpoint with the best value of this eval metric (e.g. accuracy)",
        safe_on_resume=True)
    key("train.early_stopping_patience", 0, "stop after this many evals without a better best_metric; 0: never",
        range=NON_NEGATIVE, safe_on_resume=True)
    key("train.generate_metrics", "", "seq2seq: metrics of generated text in every evaluation (comma-separated: "
        "bleu, chrf, rouge); decoding follows the sample section")
    key("train.nonfinite_policy", "skip", "a step whose loss or gradient norm is not finite leaves the parameters "
        "as they were; then skip: count it and go on | stop: save the last good state and exit",
        choices=("skip", "stop"), safe_on_resume=True)
    key("train.loss_spike_factor", 3.0, "report a logged loss above this times the median of the last 20; 0: off",
        safe_on_resume=True)
    key("train.profile_steps", "", "START:STOP (e.g. 10:15): write a JAX profiler trace of those steps to "
        "WORKDIR/profile; empty: off")

    key("peft.method", "none", "none | lora (low-rank adapters beside peft.targets; the base stays frozen)",
        choices=("none", "lora"))
    key("peft.rank", 8, "LoRA rank r", range=POSITIVE)
    key("peft.alpha", 16.0, "LoRA alpha; the adapter update is scaled by alpha / rank", range=POSITIVE)
    key("peft.dropout", 0.0, "dropout on the LoRA input (PEFT's lora_dropout)", range=UNIT_RIGHT_OPEN)
    key("peft.targets", "", "comma-separated flax_lm module names to adapt; empty: PEFT's default per family")
    key("optim.optimizer", "adamw", "adamw | adafactor (factored second moments, updates relative to each weight)",
        choices=("adamw", "adafactor"))
    key("optim.learning_rate", 1e-3, "peak, after warmup",
        range=POSITIVE, safe_on_resume=True)
    key("optim.warmup_steps", 30, "steps of linear warmup from 0 to the peak learning rate",
        safe_on_resume=True)
    key("optim.schedule", "cosine", "after warmup: cosine | linear (decay to min_lr_ratio at the last step) | "
        "constant",
        choices=("cosine", "linear", "constant"), safe_on_resume=True)
    key("optim.min_lr_ratio", 0.1, "final learning rate / peak",
        range=UNIT, safe_on_resume=True)
    key("optim.b1", 0.9, "Adam's first-moment decay",
        safe_on_resume=True)
    key("optim.b2", 0.95, "Adam's second-moment decay",
        safe_on_resume=True)
    key("optim.eps", 1e-8, "Adam's epsilon",
        safe_on_resume=True)
    key("optim.weight_decay", 0.1, "decoupled weight decay; not applied to biases, LayerNorm scales",
        safe_on_resume=True)
    key("optim.grad_clip_norm", 1.0, "clip the global gradient norm to this; 0 disables clipping",
        safe_on_resume=True)
    key("optim.layer_decay", 1.0, "layer-wise lr decay: layer l of L gets lr * decay^(L + 1 - l); 1: off",
        range=UNIT_LEFT_OPEN)
    key("optim.unfreeze_top_layers", 0, "gradual unfreezing: train the heads and the top k layers first; 0: off",
        range=NON_NEGATIVE)
    key("optim.unfreeze_every", 0, "gradual unfreezing: unfreeze one more layer every this many steps (0: never)",
        range=NON_NEGATIVE, safe_on_resume=True)

    key("parallel.data", -1, "data-parallel mesh axis; -1: all devices not used by the other axes",
        safe_on_resume=True)
    key("parallel.fsdp", 1, "fully sharded data-parallel mesh axis (parameters and optimizer state sharded)",
        safe_on_resume=True)
    key("parallel.tensor", 1, "tensor-parallel mesh axis (heads and feed-forward sharded)",
        safe_on_resume=True)
    key("parallel.dcn_data", 0, "multi-slice TPU: slices the data axis spans over the data-center network; "
        "0 picks automatically (data if the slices divide it, else fsdp)",
        range=NON_NEGATIVE, safe_on_resume=True)
    key("parallel.dcn_fsdp", 0, "multi-slice TPU: slices the fsdp axis spans; the product of the dcn axes is the "
        "slice count",
        range=NON_NEGATIVE, safe_on_resume=True)
    key("parallel.strategy", "jit", "jit: one program over the (data, fsdp, tensor) mesh | pmap: jax.pmap data "
        "parallelism (fsdp = tensor = 1)",
        choices=("jit", "pmap"), safe_on_resume=True)

    key("sample.prompt", "def ", "causal LM: the prompt sampled from at the end of training",
        safe_on_resume=True)
    key("sample.max_new_tokens", 64, "tokens to generate; 0: no sample",
        range=NON_NEGATIVE, safe_on_resume=True)
    key("sample.temperature", 0.8, "0 is greedy",
        safe_on_resume=True)
    key("sample.top_k", 40, "sample from the k most likely tokens; 0 keeps all tokens",
        range=NON_NEGATIVE, safe_on_resume=True)
    key("sample.top_p", 1.0, "nucleus sampling; 1 keeps all tokens",
        safe_on_resume=True)
    key("sample.min_p", 0.0, "drop tokens less likely than this times the most likely one",
        safe_on_resume=True)
    key("sample.repetition_penalty", 1.0, "> 1 makes tokens already in the text less likely",
        safe_on_resume=True)
    key("sample.num_beams", 1, "> 1: beam search (deterministic; the sampling settings do not apply)",
        safe_on_resume=True)
    key("sample.num_return_sequences", 1, "continuations per prompt",
        safe_on_resume=True)
    key("sample.length_penalty", 1.0, "beam scores are divided by length ** length_penalty",
        safe_on_resume=True)
    key("sample.early_stopping", "false", "beam search: true, false (a heuristic) or never, as in transformers",
        choices=("false", "true", "never"), safe_on_resume=True)
    key("sample.stop_token_ids", "", "comma-separated ids that end a sequence, besides end-of-text",
        safe_on_resume=True)

    key("peak_flops_per_device", 0.0, "for MFU; 0 looks the device kind up",
        safe_on_resume=True)
    return key
