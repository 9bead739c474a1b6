"""The complete config schema with its default values and a one-line help for each key.

Every recipe in `configs/` starts from `get_config()` and changes values; it may not
add keys. Validation (`flax_lm.config.load`) compares a recipe against this schema, so a
key that is not here is a user error, and so is a value of another type. Each key is
declared once, its help beside its default (`flax-lm config --keys PATTERN` shows both).
"""

import ml_collections


class _Schema:
    """The config being declared and the help of each key, written in one statement a key."""

    def __init__(self):
        self.config = ml_collections.ConfigDict()
        self.help: dict[str, str] = {}

    def __call__(self, name: str, default, help: str) -> None:
        """Declares the key `name` ("section.key", or a top-level "key") with its default and help."""
        *sections, leaf = name.split(".")
        node = self.config
        for section in sections:
            if section not in node:
                node[section] = ml_collections.ConfigDict()
            node = node[section]
        node[leaf] = default
        self.help[name] = help


def get_config() -> ml_collections.ConfigDict:
    """Returns the schema: every key flax_lm knows, with its default value."""
    return _declared().config


def key_help() -> dict[str, str]:
    """Each key's one-line help, by its dotted name ("train.steps"), in declaration order."""
    return _declared().help


def _declared() -> _Schema:
    key = _Schema()
    key("task", "causal_lm", "causal_lm | masked_lm | classification | token_classification | question_answering "
        "(encoders) | span_corruption (T5 pre-training) | seq2seq (text-to-text: translation, summarization)")

    key("model.family", "gpt2", "gpt2 | llama | qwen3 (decoders) | bert (encoder) | t5 (encoder-decoder)")
    key("model.variant", "bert", "encoders: bert | roberta (positions after the padding id, no NSP)")
    key("model.vocab_size", 4096, "tokens; a tokenizer trained here gets this size")
    key("model.max_len", 128, "positions the model has (GPT-2 n_positions)")
    key("model.d_model", 256, "width of the residual stream (hidden size)")
    key("model.n_layers", 4, "Transformer blocks (T5: of the encoder)")
    key("model.n_heads", 4, "attention heads (query heads with grouped-query attention)")
    key("model.d_ff", 0, "feed-forward width; 0 means 4 * d_model, as GPT-2 (and T5)")
    key("model.layer_norm_epsilon", 1e-5, "epsilon of the layer (or RMS) norms")
    key("model.dropout", 0.0, "residual and embedding dropout")
    key("model.attention_dropout", 0.0, "dropout of the attention weights; needs attention=reference")
    key("model.initializer_range", 0.02, "standard deviation of the initial weights")
    key("model.dtype", "float32", "compute dtype: float32 | bfloat16 | float16")
    key("model.param_dtype", "float32", "storage dtype of the parameters: float32 | bfloat16")
    key("model.scan_layers", False, "nn.scan over the blocks (one compiled block)")
    key("model.remat_policy", "none", "what the backward pass recomputes; see flax_lm.models.remat.POLICIES")
    key("model.attention", "auto", "attention implementation; see flax_lm.ops.attention.IMPLEMENTATIONS")
    key("model.type_vocab_size", 2, "encoders: segment (token type) embeddings")
    key("model.pad_token_id", 0, "encoders: the tokenizer's padding id (RoBERTa positions start after it)")
    key("model.num_labels", 0, "classification heads: 0 takes the count from the data; 1 is regression")
    key("model.n_decoder_layers", 0, "T5: decoder blocks; 0: as many as the encoder")
    key("model.head_dim", 0, "T5, Llama and Qwen3: size of a head (T5's d_kv); 0: d_model / n_heads")
    key("model.relative_attention_num_buckets", 32, "T5: buckets of the relative position bias")
    key("model.relative_attention_max_distance", 128, "T5: distance beyond which relative positions share a bucket")
    key("model.feed_forward", "relu", "T5: relu (T5) | gated-gelu (T5 v1.1)")
    key("model.tie_word_embeddings", True, "tied input/output embedding (T5: decoder output scaled by "
        "d_model ** -0.5; Llama: no rescale)")
    key("model.n_kv_heads", 0, "Llama, Qwen3: key/value heads of grouped-query attention; 0 = n_heads")
    key("model.rope_theta", 10000.0, "Llama, Qwen3: base of the rotary position embedding's frequencies")

    key("data.source", "default", "pre-training text: default (the embedded corpus), tfds:NAME[/CONFIG][:SPLIT], "
        "or comma-separated files/globs: plain text (a file is a "
        "document), .jsonl, .csv, .tsv, .parquet (a record is a document)")
    key("data.document_field", "text", "the field of a JSONL/CSV/Parquet/TFDS record that holds its text")
    key("data.tfds_data_dir", "", "where TFDS data sets are (prepared, or prepared there); empty: TFDS's own")
    key("data.tfds_download", True, "prepare a TFDS data set that is not in tfds_data_dir yet (downloads)")
    key("data.packing", "concat", "causal LM: concat joins documents into one stream that attends across them "
        "(GPT-2) | segments cuts the same windows but tokens attend, and positions count, within their own document")
    key("data.tokenizer", "", "a tokenizer.json to reuse; empty trains one")
    key("data.validation_fraction", 0.05, "pre-training: tail of the token stream held out")
    key("data.max_bytes", 0, "read at most this many bytes of text; 0 = all")
    key("data.seq_len", 0, "tokens per example; 0 = model.max_len (a pre-trained model may have more)")
    key("data.lowercase", True, "WordPiece tokenizers trained here: uncased (True) or cased")
    key("data.nsp", False, "masked LM: next-sentence prediction pairs (BERT) instead of packed text (RoBERTa)")
    key("data.whole_word_masking", False, "masked LM: mask all pieces of a word together")
    key("data.mask_prob", 0.15, "masked LM: share of the tokens masked")
    key("data.max_predictions", 0, "masked LM: masked positions per sequence; 0 = ceil(mask_prob * max_len)")
    key("data.train", "", "fine-tuning train split: classification .csv/.tsv/.jsonl/.parquet or a tfds: "
        "split; NER: CoNLL; QA: SQuAD v1.1 .json; seq2seq: see data.source_field")
    key("data.validation", "", "fine-tuning dev split, as data.train")
    key("data.test", "", "fine-tuning test split, as data.train")
    key("data.text_column", "sentence", "classification: the column of the text")
    key("data.text_pair_column", "", "classification: the second text of a pair task; empty for single texts")
    key("data.label_column", "label", "classification: the column of the label")
    key("data.tag_column", -1, "CoNLL: the column of the tag (-1: the last)")
    key("data.skip_bad_records", False, "classification and CoNLL files: leave out malformed rows / sentences "
        "(counted, and reported in one line per file) instead of stopping at the first")
    key("data.doc_stride", 128, "QA: overlap of the windows over a long context, in tokens")
    key("data.max_query_len", 64, "QA: question tokens kept")
    key("data.dynamic_padding", True, "classification and NER: pad each batch to its longest example, rounded up "
        "to a power of two (one compilation per width)")
    key("data.group_by_length", True, "batch training examples of similar length together; needs dynamic_padding")
    key("data.source_field", "source", "seq2seq: the column of the source in data.train/validation/test tables "
        "(.tsv/.csv/.jsonl/.parquet, tfds: splits), or the suffix of the parallel text file PREFIX.SOURCE_FIELD")
    key("data.target_field", "target", "seq2seq: the column (or file suffix) of the target, as data.source_field")
    key("data.source_prefix", "", "seq2seq: put before every source, as T5 does (\"translate English to German: \")")
    key("data.target_len", 0, "seq2seq: target tokens (with the end token); 0 = data.seq_len")
    key("data.too_long", "truncate", "seq2seq: a source or target over its length: truncate (counted, one warning) "
        "| refuse")
    key("data.noise_density", 0.15, "span corruption: share of the tokens corrupted (data.seq_len is the encoder "
        "input length)")
    key("data.mean_noise_span_length", 3.0, "span corruption: mean length of a corrupted span, in tokens")
    key("data.extra_ids", 100, "span corruption: sentinel tokens <extra_id_0> .. added to a tokenizer trained here")

    key("train.seed", 0, "seed of the initial weights, data order, dropout and masking")
    key("train.steps", 300, "optimizer steps of the run; 0: from train.epochs")
    key("train.epochs", 0.0, "passes over the training split, instead of train.steps (which must then be 0); "
        "the steps are epochs * (examples // batch_size)")
    key("train.batch_size", 32, "global, in sequences, per optimizer step")
    key("train.grad_accum_steps", 1, "micro-batches per step; batch_size must divide")
    key("train.loss_chunk_len", 16, "positions per chunk of the fused output-projection loss; 0: unfused")
    key("train.label_smoothing", 0.0, "LM tasks: this share of each target spread over the vocabulary")
    key("train.log_every", 10, "steps between logged train metrics")
    key("train.eval_every", 100, "steps between evaluations on the validation split")
    key("train.eval_batches", 8, "batches an evaluation reads; 0 evaluates the whole validation split")
    key("train.checkpoint_every", 100, "steps between checkpoints")
    key("train.keep_checkpoints", 3, "newest checkpoints kept")
    key("train.async_checkpointing", True, "write checkpoints while training goes on")
    key("train.progress_bar", True, "show a progress bar on the console")
    key("train.lock_stale_seconds", 120.0, "a workdir lock whose heartbeat stopped this long ago is taken over "
        "(only where flock does not hold, e.g. gcsfuse or NFS, and the holder is on another host)")
    key("train.init_from", "", "a flax_lm workdir or HF model dir/hub id: initial weights and tokenizer")
    key("train.best_metric", "", "keep the checkpoint with the best value of this eval metric (e.g. accuracy)")
    key("train.early_stopping_patience", 0, "stop after this many evals without a better best_metric; 0: never")
    key("train.generate_metrics", "", "seq2seq: metrics of generated text in every evaluation (comma-separated: "
        "bleu, chrf, rouge); decoding follows the sample section")
    key("train.nonfinite_policy", "skip", "a step whose loss or gradient norm is not finite leaves the parameters "
        "as they were; then skip: count it and go on | stop: save the last good state and exit")
    key("train.loss_spike_factor", 3.0, "report a logged loss above this times the median of the last 20; 0: off")
    key("train.profile_steps", "", "START:STOP (e.g. 10:15): write a JAX profiler trace of those steps to "
        "WORKDIR/profile; empty: off")

    key("optim.optimizer", "adamw", "adamw | adafactor (factored second moments, updates relative to each weight)")
    key("optim.learning_rate", 1e-3, "peak, after warmup")
    key("optim.warmup_steps", 30, "steps of linear warmup from 0 to the peak learning rate")
    key("optim.schedule", "cosine", "after warmup: cosine | linear (decay to min_lr_ratio at the last step) | "
        "constant")
    key("optim.min_lr_ratio", 0.1, "final learning rate / peak")
    key("optim.b1", 0.9, "Adam's first-moment decay")
    key("optim.b2", 0.95, "Adam's second-moment decay")
    key("optim.eps", 1e-8, "Adam's epsilon")
    key("optim.weight_decay", 0.1, "decoupled weight decay; not applied to biases, LayerNorm scales")
    key("optim.grad_clip_norm", 1.0, "clip the global gradient norm to this; 0 disables clipping")
    key("optim.layer_decay", 1.0, "layer-wise lr decay: layer l of L gets lr * decay^(L + 1 - l); 1: off")
    key("optim.unfreeze_top_layers", 0, "gradual unfreezing: train the heads and the top k layers first; 0: off")
    key("optim.unfreeze_every", 0, "gradual unfreezing: unfreeze one more layer every this many steps (0: never)")

    key("parallel.data", -1, "data-parallel mesh axis; -1: all devices not used by the other axes")
    key("parallel.fsdp", 1, "fully sharded data-parallel mesh axis (parameters and optimizer state sharded)")
    key("parallel.tensor", 1, "tensor-parallel mesh axis (heads and feed-forward sharded)")
    key("parallel.dcn_data", 0, "multi-slice TPU: slices the data axis spans over the data-center network; "
        "0 picks automatically (data if the slices divide it, else fsdp)")
    key("parallel.dcn_fsdp", 0, "multi-slice TPU: slices the fsdp axis spans; the product of the dcn axes is the "
        "slice count")
    key("parallel.strategy", "jit", "jit: one program over the (data, fsdp, tensor) mesh | pmap: jax.pmap data "
        "parallelism (fsdp = tensor = 1)")

    key("sample.prompt", "def ", "causal LM: the prompt sampled from at the end of training")
    key("sample.max_new_tokens", 64, "tokens to generate; 0: no sample")
    key("sample.temperature", 0.8, "0 is greedy")
    key("sample.top_k", 40, "sample from the k most likely tokens; 0 keeps all tokens")
    key("sample.top_p", 1.0, "nucleus sampling; 1 keeps all tokens")
    key("sample.min_p", 0.0, "drop tokens less likely than this times the most likely one")
    key("sample.repetition_penalty", 1.0, "> 1 makes tokens already in the text less likely")
    key("sample.num_beams", 1, "> 1: beam search (deterministic; the sampling settings do not apply)")
    key("sample.num_return_sequences", 1, "continuations per prompt")
    key("sample.length_penalty", 1.0, "beam scores are divided by length ** length_penalty")
    key("sample.early_stopping", "false", "beam search: true, false (a heuristic) or never, as in transformers")
    key("sample.stop_token_ids", "", "comma-separated ids that end a sequence, besides end-of-text")

    key("peak_flops_per_device", 0.0, "for MFU; 0 looks the device kind up")
    return key
