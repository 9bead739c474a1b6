"""Sampling text from a causal LM, for the end-of-run sample and `flax-lm generate`.

This first decoder recomputes the whole fixed-size window each step (no KV cache),
all inside one jitted `lax.fori_loop`: no host round trip per token.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def sample(model, params, prompt_ids: list[int], *, max_new_tokens: int, temperature: float, top_k: int,
           seed: int, max_len: int) -> list[int]:
    """Returns the prompt followed by up to `max_new_tokens` sampled ids (fewer if the context fills).

    temperature 0 is greedy; top_k 0 keeps every token.
    """
    total = min(len(prompt_ids) + max_new_tokens, max_len)
    buffer_1xL = np.zeros((1, max_len), np.int32)
    buffer_1xL[0, :len(prompt_ids)] = prompt_ids
    out = _decode(model, params, jnp.asarray(buffer_1xL), len(prompt_ids), total, float(temperature), int(top_k),
                  jax.random.PRNGKey(seed))
    return np.asarray(out)[0, :total].tolist()


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5, 6))
def _decode(model, params, buffer_1xL, start, stop, temperature, top_k, rng):
    def step(t, buffer_1xL):
        logits_V = model.apply({"params": params}, buffer_1xL)[0, t - 1].astype(jnp.float32)
        if temperature == 0.0:
            token = jnp.argmax(logits_V)
        else:
            logits_V = logits_V / temperature
            if top_k > 0:
                kth = jax.lax.top_k(logits_V, top_k)[0][-1]
                logits_V = jnp.where(logits_V < kth, -jnp.inf, logits_V)
            token = jax.random.categorical(jax.random.fold_in(rng, t), logits_V)
        return buffer_1xL.at[0, t].set(token.astype(jnp.int32))

    return jax.lax.fori_loop(start, stop, step, buffer_1xL)
