"""The complete config schema with its default values.

Every recipe in `configs/` starts from `get_config()` and changes values; it may not
add keys. Validation (`flax_lm.config`) compares a recipe against this schema, so a
key that is not here is a user error, and so is a value of another type.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Returns the schema: every key flax_lm knows, with its default value."""
    c = ml_collections.ConfigDict()
    # causal_lm | masked_lm | classification | token_classification | question_answering (encoders) |
    # span_corruption (T5 pre-training) | seq2seq (text-to-text: translation, summarization)
    c.task = "causal_lm"

    c.model = ml_collections.ConfigDict()
    c.model.family = "gpt2"            # gpt2 | llama (decoders) | bert (encoder) | t5 (encoder-decoder)
    c.model.variant = "bert"           # encoders: bert | roberta (positions after the padding id, no NSP)
    c.model.vocab_size = 4096          # tokens; a trained tokenizer gets this size
    c.model.max_len = 128              # positions the model has (GPT-2 n_positions)
    c.model.d_model = 256
    c.model.n_layers = 4
    c.model.n_heads = 4
    c.model.d_ff = 0                   # 0 means 4 * d_model, as GPT-2
    c.model.layer_norm_epsilon = 1e-5
    c.model.dropout = 0.0              # residual and embedding dropout
    c.model.attention_dropout = 0.0    # needs attention="reference"
    c.model.initializer_range = 0.02
    c.model.dtype = "float32"          # compute dtype: float32 | bfloat16 | float16
    c.model.param_dtype = "float32"    # storage dtype of the parameters
    c.model.scan_layers = False        # nn.scan over the blocks (one compiled block)
    c.model.remat_policy = "none"      # see flax_lm.models.remat.POLICIES
    c.model.attention = "auto"         # see flax_lm.attention.IMPLEMENTATIONS
    c.model.type_vocab_size = 2        # encoders: segment (token type) embeddings
    c.model.pad_token_id = 0           # encoders: the tokenizer's padding id (RoBERTa positions start after it)
    c.model.num_labels = 0             # classification heads: 0 takes the count from the data; 1 is regression
    # T5 (n_layers is the encoder's; d_ff is its feed-forward width, 0 = 4 * d_model)
    c.model.n_decoder_layers = 0       # 0: as many as the encoder
    c.model.head_dim = 0               # 0: d_model / n_heads (T5's d_kv)
    c.model.relative_attention_num_buckets = 32
    c.model.relative_attention_max_distance = 128
    c.model.feed_forward = "relu"      # relu (T5) | gated-gelu (T5 v1.1)
    c.model.tie_word_embeddings = True  # tied output embedding, decoder output scaled by d_model ** -0.5
    # Llama (also uses head_dim, d_ff and tie_word_embeddings: tied input/output embedding, no rescale)
    c.model.n_kv_heads = 0             # key/value heads of grouped-query attention; 0 = n_heads
    c.model.rope_theta = 10000.0       # base of the rotary position embedding's frequencies

    c.data = ml_collections.ConfigDict()
    # pre-training text: "default" (the embedded corpus), "tfds:NAME[/CONFIG][:SPLIT]", or comma-separated
    # files/globs: plain text (a file is a document), .jsonl, .csv, .tsv, .parquet (a record is a document)
    c.data.source = "default"
    c.data.document_field = "text"     # the field of a JSONL/CSV/Parquet/TFDS record that holds its text
    c.data.tfds_data_dir = ""          # where TFDS data sets are (prepared, or prepared there); empty: TFDS's own
    c.data.tfds_download = True        # prepare a TFDS data set that is not in tfds_data_dir yet (downloads)
    # causal LM: "concat" joins documents into one stream that attends across them (GPT-2); "segments"
    # cuts the same windows but tokens attend, and positions count, within their own document
    c.data.packing = "concat"
    c.data.tokenizer = ""              # a tokenizer.json to reuse; empty trains one
    c.data.validation_fraction = 0.05  # tail of the token stream held out
    c.data.max_bytes = 0               # read at most this many bytes of text; 0 = all
    c.data.seq_len = 0                 # tokens per example; 0 = model.max_len (a pre-trained model may have more)
    c.data.lowercase = True            # WordPiece tokenizers trained here: uncased (True) or cased
    # masked LM pre-training
    c.data.nsp = False                 # next-sentence prediction pairs (BERT) instead of packed text (RoBERTa)
    c.data.whole_word_masking = False
    c.data.mask_prob = 0.15
    c.data.max_predictions = 0         # masked positions per sequence; 0 = ceil(mask_prob * max_len)
    # fine-tuning: files of the train / dev / test splits
    c.data.train = ""                  # classification: .csv/.tsv/.jsonl; NER: CoNLL; QA: SQuAD v1.1 .json
    c.data.validation = ""
    c.data.test = ""
    c.data.text_column = "sentence"
    c.data.text_pair_column = ""       # the second text of a pair task; empty for single texts
    c.data.label_column = "label"
    c.data.tag_column = -1             # CoNLL: the column of the tag (-1: the last)
    # classification and CoNLL files: leave out malformed rows / sentences (counted, and reported in one
    # line per file) instead of stopping at the first; a file with none left is still an error
    c.data.skip_bad_records = False
    c.data.doc_stride = 128            # QA: overlap of the windows over a long context, in tokens
    c.data.max_query_len = 64          # QA: question tokens kept
    # classification and NER: pad each batch to its longest example, rounded up to a power of two
    # (one compilation per width), and batch examples of similar length together in training
    c.data.dynamic_padding = True
    c.data.group_by_length = True      # needs dynamic_padding
    # seq2seq: data.train/validation/test are .tsv/.csv/.jsonl/.parquet files or TFDS splits whose columns
    # source_field and target_field hold the pair, or a prefix P of parallel text files P.SOURCE_FIELD and
    # P.TARGET_FIELD, one sentence a line (multi30k/train with fields en and de)
    c.data.source_field = "source"
    c.data.target_field = "target"
    c.data.source_prefix = ""          # put before every source, as T5 does ("translate English to German: ")
    c.data.target_len = 0              # target tokens (with the end token); 0 = data.seq_len
    c.data.too_long = "truncate"       # a source or target over its length: truncate (counted, one warning) | refuse
    # span corruption (T5 pre-training); data.seq_len is the encoder input length
    c.data.noise_density = 0.15
    c.data.mean_noise_span_length = 3.0
    c.data.extra_ids = 100             # sentinel tokens <extra_id_0> .. added to a tokenizer trained here

    c.train = ml_collections.ConfigDict()
    c.train.seed = 0
    c.train.steps = 300
    c.train.batch_size = 32            # global, in sequences, per optimizer step
    c.train.grad_accum_steps = 1       # micro-batches per step; batch_size must divide
    c.train.loss_chunk_len = 16        # positions per chunk of the fused output-projection loss; 0: unfused
    c.train.label_smoothing = 0.0      # LM tasks: this share of each target spread over the vocabulary
    c.train.log_every = 10
    c.train.eval_every = 100
    c.train.eval_batches = 8           # 0 evaluates the whole validation split
    c.train.checkpoint_every = 100
    c.train.keep_checkpoints = 3
    c.train.async_checkpointing = True
    c.train.progress_bar = True
    c.train.init_from = ""             # a flax_lm workdir or HF model dir/hub id: initial weights and tokenizer
    c.train.best_metric = ""           # keep the checkpoint with the best value of this eval metric (e.g. accuracy)
    c.train.early_stopping_patience = 0  # stop after this many evals without a better best_metric; 0: never
    # seq2seq: metrics of generated text in every evaluation (comma-separated: bleu, chrf, rouge); decoding
    # follows the sample section (greedy at temperature 0, beam search with num_beams > 1)
    c.train.generate_metrics = ""
    # a step whose loss or gradient norm is not finite leaves the parameters as they were; then
    # skip: count it and go on | stop: save the last good state and exit (reads a flag every step)
    c.train.nonfinite_policy = "skip"
    c.train.loss_spike_factor = 3.0    # report a logged loss above this times the median of the last 20; 0: off
    # "START:STOP" (e.g. "10:15"): write a JAX profiler trace of those steps to WORKDIR/profile; empty: off
    c.train.profile_steps = ""

    c.optim = ml_collections.ConfigDict()
    c.optim.optimizer = "adamw"        # adamw | adafactor (factored second moments, updates relative to each weight)
    c.optim.learning_rate = 1e-3       # peak, after warmup
    c.optim.warmup_steps = 30
    c.optim.schedule = "cosine"        # cosine | linear | constant (after warmup)
    c.optim.min_lr_ratio = 0.1         # final learning rate / peak
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.1         # not applied to biases, LayerNorm scales
    c.optim.grad_clip_norm = 1.0       # 0 disables clipping
    c.optim.layer_decay = 1.0          # layer-wise lr decay: layer l of L gets lr * decay^(L + 1 - l); 1: off
    c.optim.unfreeze_top_layers = 0    # gradual unfreezing: train the heads and the top k layers first; 0: off
    c.optim.unfreeze_every = 0         # ... and unfreeze one more layer every this many steps (0: never)

    c.parallel = ml_collections.ConfigDict()
    c.parallel.data = -1               # -1: all devices not used by the other axes
    c.parallel.fsdp = 1
    c.parallel.tensor = 1
    # slices that the data / fsdp axes span over the data-center network on multi-slice TPU;
    # 0 picks automatically (data if the slices divide it, else fsdp); their product is the slice count
    c.parallel.dcn_data = 0
    c.parallel.dcn_fsdp = 0
    # jit: one program over the (data, fsdp, tensor) mesh | pmap: jax.pmap data parallelism (fsdp = tensor = 1)
    c.parallel.strategy = "jit"

    c.sample = ml_collections.ConfigDict()
    c.sample.prompt = "def "
    c.sample.max_new_tokens = 64
    c.sample.temperature = 0.8         # 0 is greedy
    c.sample.top_k = 40                # 0 keeps all tokens
    c.sample.top_p = 1.0               # nucleus sampling; 1 keeps all tokens
    c.sample.min_p = 0.0
    c.sample.repetition_penalty = 1.0
    c.sample.num_beams = 1             # > 1: beam search (deterministic; the sampling settings do not apply)
    c.sample.num_return_sequences = 1
    c.sample.length_penalty = 1.0      # beam scores are divided by length ** length_penalty
    c.sample.early_stopping = "false"  # beam search: true, false (a heuristic) or never, as in transformers
    c.sample.stop_token_ids = ""       # comma-separated ids that end a sequence, besides end-of-text

    c.peak_flops_per_device = 0.0      # for MFU; 0 looks the device kind up
    return c
