"""ELMo (Peters et al. 2018; allennlp's bidirectional LM): a character CNN token encoder, a two-layer
biLSTM with projections and a residual connection between layers, and the downstream scalar mix.

- Token encoder: each token's characters (byte ids, with begin- and end-of-word marks) are embedded,
  convolved with filters of several widths, max-pooled over the characters, passed through highway
  layers and projected to `d_model`. Layer 0 of the representations.
- biLSTM: per direction (forward and backward LSTMs are separate), `n_layers` LSTM-with-projection
  layers of `d_ff` cells projected to `d_model` (allennlp's LstmCellWithProjection, cell and
  projection clipped to +-3); from the second layer on, a layer's output adds its input.
- LM: one softmax (`d_model` -> vocabulary, no bias) shared by both directions: the forward top
  layer predicts the next token, the backward top layer the previous one.
- Downstream: a softmax-normalised scalar mix (with a scale gamma) of layer 0 (duplicated for the
  two directions) and the biLSTM layers, each B x T x 2*d_model, feeds a task head.

The data pipeline gives token ids; the model looks their characters up in a fixed vocab x max_chars
table built once from the tokenizer's vocabulary (`char_table`), so batches are those of the other
families. The backward direction runs each sequence reversed within its length
(`nn.RNN(reverse=True, keep_order=True)` with `seq_lengths`), so padding never reaches it.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flax_lm.models.config import ModelConfig

# character ids: 0 pads a token's row, 1..256 are byte values + 1, then the word marks
CHAR_PAD, BEGIN_OF_WORD, END_OF_WORD = 0, 257, 258
N_CHARS = 259
CLIP = 3.0   # allennlp's cell_clip and proj_clip
MIXED_LAYERS_OF = 1   # + n_layers: the layers the scalar mix weighs (token encoder, then each biLSTM layer)
BODY = "elmo"   # the parameter subtree that train.init_from copies from a pre-trained ELMo


@dataclasses.dataclass(frozen=True)
class ElmoConfig(ModelConfig):
    """d_model: the projection (token encoder output and each LSTM's output, per direction);
    d_ff: LSTM cells per direction; n_layers: biLSTM layers. `filters` are (width, count) pairs."""

    char_dim: int = 16
    filters: tuple = ((1, 32), (2, 32), (3, 64), (4, 128), (5, 256), (6, 512), (7, 1024))
    highway_layers: int = 2
    max_chars: int = 50
    frozen: bool = True
    num_labels: int = 2
    vocab: tuple = ()   # token strings in id order; () gives each id the characters of its number

    @classmethod
    def from_config(cls, model_cfg, vocab: tuple = ()) -> "ElmoConfig":
        """From the `model` section of a run config and the tokenizer's vocabulary (strings by id)."""
        base = {f.name: model_cfg[f.name] for f in dataclasses.fields(ModelConfig)}
        return cls(**base, char_dim=model_cfg.elmo_char_dim,
                   filters=parse_filters(model_cfg.elmo_filters), highway_layers=model_cfg.elmo_highway_layers,
                   max_chars=model_cfg.elmo_max_chars, frozen=model_cfg.elmo_frozen,
                   num_labels=max(model_cfg.num_labels, 1), vocab=tuple(vocab))


def parse_filters(text: str) -> tuple[tuple[int, int], ...]:
    """"1:32,2:64" -> ((1, 32), (2, 64)): (width in characters, filter count) pairs; ValueError if malformed."""
    pairs = []
    for part in text.split(","):
        width, _, count = part.strip().partition(":")
        if not (width.isdigit() and count.isdigit() and int(width) > 0 and int(count) > 0):
            raise ValueError(f"{part.strip()!r} is not WIDTH:COUNT with positive integers")
        pairs.append((int(width), int(count)))
    return tuple(pairs)


def vocabulary(tokenizer) -> tuple[str, ...]:
    """The token strings of a `tokenizers.Tokenizer`, by id (special tokens included)."""
    by_id = {i: token for token, i in tokenizer.get_vocab(with_added_tokens=True).items()}
    return tuple(by_id.get(i, "") for i in range(max(by_id) + 1))


@functools.lru_cache(maxsize=4)
def char_table(vocab: tuple, vocab_size: int, max_chars: int) -> np.ndarray:
    """vocab_size x max_chars int32: each token's UTF-8 bytes (+1) between the begin- and end-of-word
    ids, cut to max_chars - 2 bytes, then CHAR_PAD. Ids past `vocab` spell their decimal number."""
    table = np.full((vocab_size, max_chars), CHAR_PAD, np.int32)
    for i in range(vocab_size):
        text = vocab[i] if i < len(vocab) else str(i)
        chars = [BEGIN_OF_WORD, *(b + 1 for b in text.encode("utf-8")[:max_chars - 2]), END_OF_WORD]
        table[i, :len(chars)] = chars
    return table


def _dense(features: int, axes: tuple[str, str], name: str, use_bias: bool = True, bias_init=None) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, name=name,
                    kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
                    bias_init=nn.with_logical_partitioning(bias_init or nn.initializers.zeros_init(), axes[1:]))


class CharCNN(nn.Module):
    """Token ids (B x T) -> token encodings (B x T x d_model) from the tokens' characters."""

    cfg: ElmoConfig

    @nn.compact
    def __call__(self, ids_BxT):
        cfg = self.cfg
        chars_BxTxC = jnp.asarray(char_table(cfg.vocab, cfg.vocab_size, cfg.max_chars))[ids_BxT]
        B, T, C = chars_BxTxC.shape
        x_NxCxE = nn.Embed(N_CHARS, cfg.char_dim, name="char_embed", embedding_init=nn.with_logical_partitioning(
            nn.initializers.uniform(1.0), (None, None)))(chars_BxTxC.reshape(B * T, C))
        pooled = []
        for width, count in cfg.filters:
            conv_NxCxF = nn.Conv(count, (width,), padding="VALID", name=f"conv_{width}")(x_NxCxE)
            pooled.append(nn.relu(conv_NxCxF.max(axis=1)))   # allennlp: max over characters, then relu
        x_NxF = jnp.concatenate(pooled, axis=-1)
        F = x_NxF.shape[-1]
        for i in range(cfg.highway_layers):
            # the gate's bias starts at 1, so a fresh highway layer mostly carries its input through
            h = nn.Dense(2 * F, name=f"highway_{i}", bias_init=lambda k, s, d=jnp.float32: jnp.concatenate(
                [jnp.zeros(s[0] // 2, d), jnp.ones(s[0] // 2, d)]))(x_NxF)
            nonlinear, gate = jnp.split(h, 2, axis=-1)
            gate = nn.sigmoid(gate)
            x_NxF = gate * x_NxF + (1 - gate) * nn.relu(nonlinear)
        x_NxD = _dense(cfg.d_model, (None, "embed"), "projection")(x_NxF)
        return x_NxD.reshape(B, T, cfg.d_model)


class LSTMProjectionCell(nn.RNNCellBase):
    """One step of an LSTM whose hidden state is a projection of its cells (allennlp's
    LstmCellWithProjection): carry (cell B x d_ff, hidden B x d_model), input B x d_in -> hidden."""

    cfg: ElmoConfig

    @nn.compact
    def __call__(self, carry, x_BxI):
        cell_BxH, hidden_BxD = carry
        H = self.cfg.d_ff
        gates = (_dense(4 * H, ("embed", "mlp"), "input")(x_BxI)
                 + _dense(4 * H, ("embed", "mlp"), "state", use_bias=False)(hidden_BxD))
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        cell_BxH = jnp.clip(nn.sigmoid(f) * cell_BxH + nn.sigmoid(i) * jnp.tanh(g), -CLIP, CLIP)
        hidden_BxD = jnp.clip(_dense(self.cfg.d_model, ("mlp", "embed"), "projection", use_bias=False)(
            nn.sigmoid(o) * jnp.tanh(cell_BxH)), -CLIP, CLIP)
        return (cell_BxH, hidden_BxD), hidden_BxD

    def initialize_carry(self, rng, input_shape):
        batch = input_shape[:-1]
        return jnp.zeros((*batch, self.cfg.d_ff)), jnp.zeros((*batch, self.cfg.d_model))

    @property
    def num_feature_axes(self) -> int:
        return 1


class Elmo(nn.Module):
    """Token ids (B x T) and lengths (B,) -> the representations: `n_layers` + 1 arrays of
    B x T x 2*d_model (token encoder duplicated, then each biLSTM layer as [forward, backward])."""

    cfg: ElmoConfig

    @nn.compact
    def __call__(self, ids_BxT, lengths_B=None, deterministic: bool = True):
        cfg = self.cfg
        if lengths_B is None:
            lengths_B = jnp.full(ids_BxT.shape[:1], ids_BxT.shape[1], jnp.int32)
        x_BxTxD = CharCNN(cfg, name="token_encoder")(ids_BxT)
        layers = [jnp.concatenate([x_BxTxD, x_BxTxD], axis=-1)]
        inputs = {"forward": x_BxTxD, "backward": x_BxTxD}
        for layer in range(cfg.n_layers):
            outputs = {}
            for direction, inp in inputs.items():
                rnn = nn.RNN(LSTMProjectionCell(cfg, name=f"{direction}_{layer}"), reverse=direction == "backward",
                             keep_order=True)
                out = rnn(nn.Dropout(cfg.dropout)(inp, deterministic=deterministic), seq_lengths=lengths_B)
                outputs[direction] = out + inp if layer > 0 else out   # the residual between layers
            layers.append(jnp.concatenate([outputs["forward"], outputs["backward"]], axis=-1))
            inputs = outputs
        return layers


class ElmoBidirectionalLM(nn.Module):
    """Token ids (B x T) -> (forward top layer B x T x d_model, backward top layer B x T x d_model,
    the softmax weights V x d_model that both directions share); with `logits=True` the logits
    (forward predicting token t+1, backward token t-1), each B x T x V."""

    cfg: ElmoConfig

    @nn.compact
    def __call__(self, ids_BxT, lengths_B=None, deterministic: bool = True, logits: bool = False):
        D = self.cfg.d_model
        top_BxTx2D = Elmo(self.cfg, name=BODY)(ids_BxT, lengths_B, deterministic)[-1]
        softmax_VxD = self.param("softmax", nn.with_logical_partitioning(
            nn.initializers.normal(self.cfg.initializer_range), ("vocab", "embed")), (self.cfg.vocab_size, D))
        forward_BxTxD, backward_BxTxD = top_BxTx2D[..., :D], top_BxTx2D[..., D:]
        if logits:
            return forward_BxTxD @ softmax_VxD.T, backward_BxTxD @ softmax_VxD.T
        return forward_BxTxD, backward_BxTxD, softmax_VxD


class ScalarMix(nn.Module):
    """gamma * sum_k softmax(s)_k * layer_k over a list of same-shaped layers (the ELMo task vector)."""

    @nn.compact
    def __call__(self, layers):
        s_K = self.param("weights", nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)), (len(layers),))
        gamma = self.param("gamma", nn.with_logical_partitioning(nn.initializers.ones_init(), ()), ())
        return gamma * sum(w * layer for w, layer in zip(jax.nn.softmax(s_K), layers))


def _features(cfg: ElmoConfig, ids_BxT, mask_BxT, deterministic: bool):
    """(scalar mix of the ELMo layers B x T x 2*d_model, lengths B); frozen ELMo weights get no gradient."""
    lengths_B = None if mask_BxT is None else mask_BxT.sum(-1).astype(jnp.int32)
    layers = Elmo(cfg, name=BODY)(ids_BxT, lengths_B, deterministic)
    if cfg.frozen:
        layers = [jax.lax.stop_gradient(layer) for layer in layers]
    mixed = ScalarMix(name="scalar_mix")(layers)
    return nn.Dropout(cfg.dropout)(mixed, deterministic=deterministic), lengths_B


class ElmoTokenClassification(nn.Module):
    """Encoder inputs (B x T; token types unused) -> tag logits B x T x num_labels: the scalar mix
    through one biLSTM (d_model cells a direction) and a linear layer, as ELMo's NER model."""

    cfg: ElmoConfig

    @nn.compact
    def __call__(self, input_ids_BxT, token_type_ids_BxT=None, attention_mask_BxT=None, deterministic: bool = True):
        mixed_BxTxE, lengths_B = _features(self.cfg, input_ids_BxT, attention_mask_BxT, deterministic)
        H = self.cfg.d_model
        forward = nn.RNN(nn.OptimizedLSTMCell(H, name="tagger_forward"))(mixed_BxTxE, seq_lengths=lengths_B)
        backward = nn.RNN(nn.OptimizedLSTMCell(H, name="tagger_backward"), reverse=True, keep_order=True)(
            mixed_BxTxE, seq_lengths=lengths_B)
        hidden = nn.Dropout(self.cfg.dropout)(jnp.concatenate([forward, backward], -1), deterministic=deterministic)
        return _dense(self.cfg.num_labels, ("embed", None), "classifier")(hidden)


class ElmoSequenceClassification(nn.Module):
    """Encoder inputs (B x T) -> class logits B x num_labels: the scalar mix, mean-pooled over the
    sequence's tokens, through a linear layer."""

    cfg: ElmoConfig

    @nn.compact
    def __call__(self, input_ids_BxT, token_type_ids_BxT=None, attention_mask_BxT=None, deterministic: bool = True):
        mixed_BxTxE, _ = _features(self.cfg, input_ids_BxT, attention_mask_BxT, deterministic)
        mask_BxT = jnp.ones(input_ids_BxT.shape) if attention_mask_BxT is None else attention_mask_BxT
        pooled_BxE = (mixed_BxTxE * mask_BxT[..., None]).sum(1) / jnp.maximum(mask_BxT.sum(1), 1)[:, None]
        return _dense(self.cfg.num_labels, ("embed", None), "classifier")(pooled_BxE)


HEADS = {"bidirectional_lm": ElmoBidirectionalLM, "token_classification": ElmoTokenClassification,
         "sequence_classification": ElmoSequenceClassification}


def trainable_mask(params: dict, frozen: bool) -> dict:
    """True for the parameters a run trains: all, or with `frozen` all but the ELMo body."""
    return {name: jax.tree.map(lambda _: not (frozen and name == BODY), sub) for name, sub in params.items()}


def params_from_pretrained(source_params: dict, fresh: dict) -> dict:
    """`fresh` (a downstream model's host parameters) with its ELMo body taken from a pre-trained
    model's; every tensor's shape must match (ValueError naming the first that does not)."""
    def take(path, new):
        old = source_params[BODY]
        for key in path:
            old = old[key.key]
        if np.shape(old) != np.shape(new):
            raise ValueError(f"{'/'.join(k.key for k in path)} has shape {np.shape(old)} in the source, "
                             f"{np.shape(new)} here")
        return np.asarray(old)
    return {**fresh, BODY: jax.tree_util.tree_map_with_path(take, fresh[BODY])}


def num_params(cfg: ElmoConfig) -> int:
    params = jax.eval_shape(lambda: ElmoBidirectionalLM(cfg).init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def flops_per_token(cfg: ElmoConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 x the matrix-multiply parameters each token passes through (the
    character CNN's convolutions counted once per character position)."""
    del seq_len
    convs = sum(width * cfg.char_dim * count * cfg.max_chars for width, count in cfg.filters)
    F = sum(count for _, count in cfg.filters)
    lstm = 2 * cfg.n_layers * (4 * cfg.d_ff * 2 * cfg.d_model + cfg.d_ff * cfg.d_model)
    return 6.0 * (convs + cfg.highway_layers * 2 * F * F + F * cfg.d_model + lstm + 2 * cfg.vocab_size * cfg.d_model)
